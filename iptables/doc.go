// Package iptables is nodeproxy's `--mode=iptables` backend: it programs Services with
// iptables (or ip6tables) in the legacy or nft variant the node uses, with upstream kube-proxy
// v1.37's chains and rules (see README.md for the chain map).
//
// Structure:
//
//   - a pure rule builder (builder.go, plan.go, static.go): one service port and its endpoints
//     (chosen with endpoints.Choose) become per-port nat chains (KUBE-SVC/SVL/EXT/FW/SEP, with
//     upstream's hashed names) and a few rules in the shared top-level chains;
//   - a restore writer (restore.go, state.go): a full sync flushes and rewrites every chain and
//     deletes the stale service chains iptables-save shows; a partial sync is computed against
//     the state committed in memory (the kernel is never read) and writes only the chains whose
//     content changed, "-D"/"-I" lines for the top-level rules that changed, and "-X" for chains
//     no longer used. A partial sync that changes no rule runs no command at all;
//   - an Executor (executor.go) over iptables-restore --noflush -w 5 and, through
//     github.com/coreos/go-iptables, the single commands for jump rules in built-in chains and
//     canaries; Fake (fake.go) is an in-memory Executor for tests;
//   - a canary monitor (canary.go), Cleanup (cleanup.go) and variant detection (variant.go).
package iptables
