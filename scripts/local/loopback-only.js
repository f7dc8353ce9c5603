// Preloaded into kinesis-local (`node --require loopback-only.js main.js`): it binds
// 0.0.0.0 and has no setting for the host, and the local stack must listen on loopback
// only. Every listen(port[, host][, backlog][, callback]) that names no host or a wildcard
// host is made to bind 127.0.0.1.
"use strict";
const net = require("net");
const listen = net.Server.prototype.listen;
const WILDCARDS = new Set([undefined, null, "", "0.0.0.0", "::"]);
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" || (typeof args[0] === "string" && /^\d+$/.test(args[0]))) {
    if (typeof args[1] === "function" || args.length === 1) {
      args.splice(1, 0, "127.0.0.1");
    } else if (WILDCARDS.has(args[1])) {
      args[1] = "127.0.0.1";
    }
  } else if (args[0] && typeof args[0] === "object" && !Array.isArray(args[0]) && "port" in args[0]) {
    if (WILDCARDS.has(args[0].host)) args[0] = { ...args[0], host: "127.0.0.1" };
  }
  return listen.apply(this, args);
};
