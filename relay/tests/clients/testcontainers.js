// testcontainers for Node (npm) as a test suite calls it: it finds the
// container runtime from DOCKER_HOST itself (ping, version, info), then
// starts a GenericContainer. Ryuk off, the host given, as the README of
// testcontainers says for a remote daemon.
const { GenericContainer, getContainerRuntimeClient } = require("testcontainers");

const name = process.argv[2];
const ok = (step) => console.log("ok:", step);

async function main() {
  const client = await getContainerRuntimeClient();
  ok("ping");
  if (!client.info.containerRuntime.serverVersion) throw new Error("no server version");
  ok("version");
  await client.container.list();
  ok("list");
  const cmd = `echo hello-${name}; while [ ! -f /done ]; do sleep 0.1; done`;
  const started = await new GenericContainer("busybox")
    .withName(name)
    .withCommand(["sh", "-c", cmd])
    .withNetworkMode("none")
    .start();
  ok("create");
  ok("start");
  const exec = await started.exec(["sh", "-c", `echo exec-${name}; touch /done`]);
  if (exec.exitCode !== 0 || !exec.output.includes(`exec-${name}`)) {
    throw new Error(`the exec gave ${JSON.stringify(exec)}`);
  }
  ok("exec");
  const container = client.container.getById(started.getId());
  const waited = await container.wait();
  if (waited.StatusCode !== 0) throw new Error(`exit code ${waited.StatusCode}`);
  ok("wait");
  const logs = await container.logs({ stdout: true });
  if (!logs.toString().includes(`hello-${name}`)) throw new Error(`the logs were ${JSON.stringify(logs.toString())}`);
  ok("logs");
  await container.remove({ force: true });
  ok("rm");
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
