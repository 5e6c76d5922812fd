"""docker-py (PyPI `docker`) as a user's script calls it: docker.from_env()."""
import sys

import docker

name = sys.argv[1]


def ok(step):
    print("ok:", step, flush=True)


client = docker.from_env(timeout=90)
assert client.ping()
ok("ping")
client.version()
ok("version")
client.containers.list(all=True)
ok("list")
cmd = f"echo hello-{name}; while [ ! -f /done ]; do sleep 0.1; done"
container = client.containers.create(
    "busybox", ["sh", "-c", cmd], name=name, network_mode="none"
)
ok("create")
container.start()
ok("start")
code, out = container.exec_run(["sh", "-c", f"echo exec-{name}; touch /done"])
assert code == 0 and f"exec-{name}".encode() in out, (code, out)
ok("exec")
result = container.wait(timeout=90)
assert result["StatusCode"] == 0, result
ok("wait")
logs = container.logs()
assert f"hello-{name}".encode() in logs, logs
ok("logs")
container.remove(force=True)
ok("rm")
