// Docker's Go SDK (Debian's golang-github-docker-docker-dev, GOPATH
// mode) as a user's program calls it: client.FromEnv.
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
)

func step(name string, err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
	fmt.Println("ok:", name)
}

func main() {
	name := os.Args[1]
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	step("client", err)
	_, err = cli.Ping(ctx)
	step("ping", err)
	_, err = cli.ServerVersion(ctx)
	step("version", err)
	_, err = cli.ContainerList(ctx, types.ContainerListOptions{All: true})
	step("list", err)
	cmd := "echo hello-" + name + "; while [ ! -f /done ]; do sleep 0.1; done"
	created, err := cli.ContainerCreate(ctx,
		&container.Config{Image: "busybox", Cmd: []string{"sh", "-c", cmd}},
		&container.HostConfig{NetworkMode: "none"}, nil, nil, name)
	step("create", err)
	step("start", cli.ContainerStart(ctx, created.ID, types.ContainerStartOptions{}))
	exec, err := cli.ContainerExecCreate(ctx, created.ID, types.ExecConfig{
		Cmd:          []string{"sh", "-c", "echo exec-" + name + "; touch /done"},
		AttachStdout: true, AttachStderr: true,
	})
	step("exec create", err)
	attached, err := cli.ContainerExecAttach(ctx, exec.ID, types.ExecStartCheck{})
	step("exec attach", err)
	var out, stderr bytes.Buffer
	_, err = stdcopy.StdCopy(&out, &stderr, attached.Reader)
	attached.Close()
	if err == nil && !strings.Contains(out.String(), "exec-"+name) {
		err = fmt.Errorf("the exec printed %q", out.String())
	}
	step("exec", err)
	waited, failed := cli.ContainerWait(ctx, created.ID, container.WaitConditionNotRunning)
	select {
	case w := <-waited:
		if w.StatusCode != 0 {
			err = fmt.Errorf("exit code %d", w.StatusCode)
		}
	case err = <-failed:
	}
	step("wait", err)
	logs, err := cli.ContainerLogs(ctx, created.ID, types.ContainerLogsOptions{ShowStdout: true})
	step("logs open", err)
	out.Reset()
	_, err = stdcopy.StdCopy(&out, &stderr, logs)
	logs.Close()
	if err == nil && !strings.Contains(out.String(), "hello-"+name) {
		err = fmt.Errorf("the logs were %q", out.String())
	}
	step("logs", err)
	step("rm", cli.ContainerRemove(ctx, created.ID, types.ContainerRemoveOptions{Force: true}))
}
