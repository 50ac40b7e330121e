package app

import (
	"context"
	"errors"
)

// Run runs the proxy server with a resolved configuration.
//
// TEMPORARY placeholder so that the tree compiles: the real Run lives in
// server.go, which replaces this file.
func Run(ctx context.Context, cfg *Config) error {
	return errors.New("server not wired yet")
}
