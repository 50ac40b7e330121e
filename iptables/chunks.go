package iptables

// restoreChunkChains is the most per-service-port chains one iptables-restore declares when a
// sync is split into chunks. iptables-nft's userspace cost of a restore grows with (chains in
// the restore) x (rules): 10,000 service ports of 10 endpoints take 23-30 s in one restore,
// but 4.3 s in ten restores of 1,000 chains each plus 2.1 s for the final restore.
const restoreChunkChains = 1000

// chunkChains is the chunk size in use: restoreChunkChains, except in tests, which make it
// small to write a small ruleset in many chunks.
var chunkChains = restoreChunkChains

// syncWrite is what one sync writes, before it is cut into iptables-restore inputs: the
// per-service-port chains to (re)write, grouped by service port, and everything else (the
// top-level chains and rules, and the deletion of chains no longer used) in final.
type syncWrite struct {
	ports      [][]chainRules
	portChains int
	final      restoreText
	// support are the chains per-port chains jump to besides their own (KUBE-MARK-MASQ),
	// rewritten at the head of each chunk so that a chunk applies to an empty table too.
	support []chainRules
}

// addPort adds one service port's chains to (re)write (nothing when chains is empty).
func (sw *syncWrite) addPort(chains []chainRules) {
	if len(chains) == 0 {
		return
	}
	sw.ports = append(sw.ports, chains)
	sw.portChains += len(chains)
}

// inputs returns the iptables-restore inputs of the sync, to run in order. When split is
// false, or the sync writes at most chunkChains per-port chains, that is one input holding
// everything (one atomic change). Otherwise it is chunks of at most chunkChains per-port
// chains each (a port's chains are never split across chunks, so each chunk leaves every
// port it writes complete), then final: nothing jumps to a new chain before the chunk that
// fills it ran, existing chains are replaced atomically chunk by chunk, and the top level
// changes, and chains no longer used go, in one last atomic restore. Empty inputs are left
// out. It consumes sw: call it once.
func (sw *syncWrite) inputs(split bool) []*restoreText {
	if !split || sw.portChains <= chunkChains {
		for _, port := range sw.ports {
			for _, c := range port {
				sw.final.writeChain(tableNAT, c)
			}
		}
		sw.ports, sw.portChains = nil, 0
		if sw.final.empty() {
			return nil
		}
		return []*restoreText{&sw.final}
	}
	var out []*restoreText
	var cur *restoreText
	inCur := 0
	for _, port := range sw.ports {
		if cur == nil || inCur+len(port) > chunkChains {
			cur, inCur = &restoreText{}, 0
			for _, c := range sw.support {
				cur.writeChain(tableNAT, c)
			}
			out = append(out, cur)
		}
		for _, c := range port {
			cur.writeChain(tableNAT, c)
		}
		inCur += len(port)
	}
	if !sw.final.empty() {
		out = append(out, &sw.final)
	}
	return out
}
