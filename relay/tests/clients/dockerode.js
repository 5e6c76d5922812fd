// dockerode (npm) as a user's script calls it: new Docker(), which
// reads DOCKER_HOST through docker-modem.
const Docker = require("dockerode");
const { PassThrough } = require("stream");

const name = process.argv[2];
const ok = (step) => console.log("ok:", step);

async function main() {
  const docker = new Docker();
  await docker.ping();
  ok("ping");
  await docker.version();
  ok("version");
  await docker.listContainers({ all: true });
  ok("list");
  const cmd = `echo hello-${name}; while [ ! -f /done ]; do sleep 0.1; done`;
  const container = await docker.createContainer({
    Image: "busybox",
    Cmd: ["sh", "-c", cmd],
    name,
    HostConfig: { NetworkMode: "none" },
  });
  ok("create");
  await container.start();
  ok("start");
  const exec = await container.exec({
    Cmd: ["sh", "-c", `echo exec-${name}; touch /done`],
    AttachStdout: true,
    AttachStderr: true,
  });
  const stream = await exec.start({ hijack: true, stdin: false });
  const out = new PassThrough();
  let said = "";
  out.on("data", (chunk) => (said += chunk.toString()));
  docker.modem.demuxStream(stream, out, out);
  await new Promise((resolve, reject) => {
    stream.on("end", resolve);
    stream.on("close", resolve);
    stream.on("error", reject);
  });
  if (!said.includes(`exec-${name}`)) throw new Error(`the exec printed ${JSON.stringify(said)}`);
  ok("exec");
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
