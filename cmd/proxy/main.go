// Command proxy is nodeproxy, a drop-in replacement for kube-proxy.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/nodeproxy/nodeproxy/cmd/proxy/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := app.Main(ctx, os.Args[1:], os.Stdout, os.Stderr, app.Run)
	stop()
	os.Exit(code)
}
