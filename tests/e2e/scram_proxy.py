#!/usr/bin/env python3
"""A SASL/SCRAM front for a Kafka broker that has none, for the run.sh end-to-end test.

tansu 0.6.0 cannot authenticate SCRAM with its in-memory storage (that engine stores no
SCRAM credentials, and the broker is built without PLAIN), yet the Python replicator's env
file says KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT and KAFKA_SASL_MECHANISM=SCRAM-SHA-512.
So the test runs tansu without authentication behind this proxy, which does what a Kafka
broker's SASL_PLAINTEXT listener does before it serves a connection:

  ApiVersions        forwarded to the broker (allowed before authentication)
  SaslHandshake v1   answered here: only the configured mechanism is enabled
  SaslAuthenticate   a real SCRAM-SHA-512 (or -256) server exchange (RFC 5802/7677)
                     that verifies the client's proof against the configured password
  anything else      before authentication: the connection is closed, as Kafka does

After a successful exchange the connection is piped to the broker byte for byte. Run tansu
with --advertised-listener-url pointing at this proxy so that every client comes here.

Usage: scram_proxy.py --upstream HOST:PORT --user NAME --password-env VAR
                      [--mechanism SCRAM-SHA-512] [--port 0]
Prints "listening on PORT" on stdout once ready; logs one line per authentication to stderr
(never the password).
"""

import argparse
import base64
import hashlib
import hmac
import os
import secrets
import socket
import struct
import sys
import threading

API_SASL_HANDSHAKE = 17
API_VERSIONS = 18
API_SASL_AUTHENTICATE = 36
ERR_UNSUPPORTED_SASL_MECHANISM = 33
ERR_SASL_AUTHENTICATION_FAILED = 58
ITERATIONS = 4096


def log(message):
    sys.stderr.write(f"scram-proxy: {message}\n")
    sys.stderr.flush()


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def read_frame(sock):
    (size,) = struct.unpack(">i", read_exact(sock, 4))
    return read_exact(sock, size)


def send_frame(sock, payload):
    sock.sendall(struct.pack(">i", len(payload)) + payload)


def kafka_string(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return s

    def bytes(self):
        n = self.take(">i")
        b = self.data[self.pos : self.pos + max(n, 0)]
        self.pos += max(n, 0)
        return b


class Scram:
    """The server side of one SCRAM exchange."""

    def __init__(self, mechanism, user, password):
        self.hash = {"SCRAM-SHA-512": hashlib.sha512, "SCRAM-SHA-256": hashlib.sha256}[mechanism]
        self.user, self.password = user, password
        self.salt = secrets.token_bytes(16)
        self.step = 0

    def hmac(self, key, msg):
        return hmac.new(key, msg, self.hash).digest()

    def respond(self, message):
        """Returns (reply bytes, done, ok)."""
        text = message.decode()
        if self.step == 0:
            self.step = 1
            gs2, _, bare = text.partition(",")
            _, _, bare = bare.partition(",")  # skip the authzid field
            attrs = dict(part.split("=", 1) for part in bare.split(","))
            self.client_user = attrs.get("n", "").replace("=2C", ",").replace("=3D", "=")
            self.client_first_bare = bare
            self.nonce = attrs["r"] + base64.b64encode(secrets.token_bytes(18)).decode()
            self.server_first = (
                f"r={self.nonce},s={base64.b64encode(self.salt).decode()},i={ITERATIONS}"
            )
            return self.server_first.encode(), False, True
        final_without_proof, _, proof_b64 = text.rpartition(",p=")
        attrs = dict(part.split("=", 1) for part in final_without_proof.split(","))
        if attrs.get("r") != self.nonce or self.client_user != self.user:
            return b"e=invalid-proof", True, False
        salted = hashlib.pbkdf2_hmac(
            self.hash().name, self.password.encode(), self.salt, ITERATIONS
        )
        client_key = self.hmac(salted, b"Client Key")
        stored_key = self.hash(client_key).digest()
        auth_message = ",".join(
            [self.client_first_bare, self.server_first, final_without_proof]
        ).encode()
        signature = self.hmac(stored_key, auth_message)
        expected = bytes(a ^ b for a, b in zip(client_key, signature))
        if not hmac.compare_digest(expected, base64.b64decode(proof_b64)):
            return b"e=invalid-proof", True, False
        server_signature = self.hmac(self.hmac(salted, b"Server Key"), auth_message)
        return b"v=" + base64.b64encode(server_signature), True, True


def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve(client, args, password):
    try:
        upstream = socket.create_connection(args.upstream_addr)
    except OSError as e:
        log(f"cannot reach the broker at {args.upstream}: {e}")
        client.close()
        return
    scram, user, authenticated = None, "?", False
    try:
        while True:
            frame = read_frame(client)
            r = Reader(frame)
            api_key, api_version, correlation_id = r.take(">hhi")
            r.string()  # client_id
            if api_key == API_VERSIONS:
                send_frame(upstream, frame)
                send_frame(client, read_frame(upstream))
            elif api_key == API_SASL_HANDSHAKE:
                if api_version < 1:
                    log("SaslHandshake v0 (unframed SASL) is not supported")
                    return
                mechanism = r.string()
                mechanism_ok = mechanism == args.mechanism
                error = 0 if mechanism_ok else ERR_UNSUPPORTED_SASL_MECHANISM
                body = struct.pack(">ihi", correlation_id, error, 1) + kafka_string(args.mechanism)
                send_frame(client, body)
                if not mechanism_ok:
                    log(f"refused mechanism {mechanism}; only {args.mechanism} is enabled")
                    return
                scram = Scram(args.mechanism, args.user, password)
            elif api_key == API_SASL_AUTHENTICATE and scram is not None:
                reply, done, ok = scram.respond(r.bytes())
                user = getattr(scram, "client_user", "?")
                error = 0 if ok else ERR_SASL_AUTHENTICATION_FAILED
                message = None if ok else "Authentication failed during authentication due to invalid credentials with SASL mechanism " + args.mechanism
                body = struct.pack(">ih", correlation_id, error)
                body += struct.pack(">h", -1) if message is None else kafka_string(message)
                body += struct.pack(">i", len(reply)) + reply
                if api_version >= 1:
                    body += struct.pack(">q", 0)
                send_frame(client, body)
                if done and ok:
                    log(f"authenticated {user} with {args.mechanism}")
                    authenticated = True
                    break
                if done:
                    log(f"authentication failed for {user} with {args.mechanism}")
                    return
            else:
                log(f"closing: request {api_key} v{api_version} before authentication")
                return
    except EOFError:
        pass
    except (OSError, ValueError, KeyError, struct.error) as e:
        log(f"closing: {e!r}")
    finally:
        if not authenticated:
            client.close()
            upstream.close()
    if not authenticated:
        return
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
    pipe(client, upstream)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-env", required=True)
    parser.add_argument("--mechanism", default="SCRAM-SHA-512")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    args.upstream_addr = (host, int(port))
    password = os.environ[args.password_env]
    listener = socket.create_server(("127.0.0.1", args.port))
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, args, password), daemon=True).start()


if __name__ == "__main__":
    main()
