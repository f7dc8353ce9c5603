"""The release binary driven as the KCL daemon drives it, on real pipes: for scenarios the real
daemon cannot make on demand (stale arrival times, two owners of one shard at once). It speaks
the MultiLang protocol exactly as docs/multilang-protocol.md describes the daemon."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time


class Child:
    """The release binary as the daemon runs it: one JSON line per action on stdin, the
    answers (checkpoints, then a status) read from stdout, each checkpoint confirmed."""

    def __init__(self, binary, config_path, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [str(binary), "--config", str(config_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env={**os.environ, "RUST_LOG": "info"},
        )
        self.buffer = b""
        self.checkpoints: list[tuple[str, int]] = []

    def send(self, message: dict) -> None:
        self.proc.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        self.proc.stdin.flush()

    def _line(self, deadline: float) -> bytes | None:
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the child did not answer in time; its log:\n" + self.text())
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    return None
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def answer(self, action: str, timeout: float = 60) -> bool:
        """Confirms checkpoints until the status for `action`; False when stdout closes first."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline)
            if line is None:
                return False
            if not line.strip():
                continue
            message = json.loads(line)
            if message["action"] == "checkpoint":
                self.checkpoints.append((message["sequenceNumber"], message.get("subSequenceNumber") or 0))
                self.send({**message, "error": None})
            elif message["action"] == "status":
                assert message["responseFor"] == action, message
                return True

    def act(self, message: dict, timeout: float = 60) -> bool:
        self.send(message)
        return self.answer(message["action"], timeout)

    def close(self, timeout: float = 30) -> int:
        self.proc.stdin.close()
        # What is left on stdout: the checkpoints of a child that stopped on purpose.
        try:
            while self.answer("none", timeout):
                pass
        except AssertionError:
            pass
        code = self.proc.wait(timeout)
        self.log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")
