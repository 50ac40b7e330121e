package iptables

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"sync"
)

// restoreSession feeds every restore of one family to a single long-running
// `iptables-nft-restore -v --noflush`, instead of starting one process per restore: starting
// the binary costs about 7 ms on this machine (dynamic linking, extension loading), twice the
// work of a one-endpoint change. The process applies each input at its COMMIT lines as it
// reads them and, with -v, echoes the comment lines of its input to stdout; so each input is
// followed by a numbered comment, and the restore is done when that comment comes back. An
// input that fails ends the process with the failing line on stderr; the next restore starts
// a new one.
//
// Only for iptables-nft: it takes no lock, so a process that lives on blocks no one.
// iptables-legacy-restore holds the xtables lock for as long as it runs.
type restoreSession struct {
	path string
	ns   nsRunner

	mu   sync.Mutex
	proc *sessionProcess
}

// sessionProcess is one running iptables-nft-restore of a session.
type sessionProcess struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	// lines are the lines of its stdout; closed at EOF.
	lines  chan string
	stderr *lockedBuffer
	// written counts the lines written to it, for mapping its error line numbers (which
	// count from its start) back to the input that failed.
	written int
	seq     uint64
}

// lockedBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// restore applies data and returns when the kernel has committed it, or with the error of
// the failing line.
func (s *restoreSession) restore(ctx context.Context, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil && s.proc.exited() {
		s.proc.reap()
		s.proc = nil
	}
	if s.proc == nil {
		p, err := s.start()
		if err != nil {
			return err
		}
		s.proc = p
	}
	p := s.proc
	p.seq++
	marker := "# nodeproxy restore " + strconv.FormatUint(p.seq, 10)
	input := make([]byte, 0, len(data)+len(marker)+2)
	input = append(input, data...)
	if len(input) > 0 && input[len(input)-1] != '\n' {
		input = append(input, '\n')
	}
	input = append(input, marker...)
	input = append(input, '\n')
	offset := p.written
	p.written += bytes.Count(input, []byte{'\n'})
	if _, err := p.stdin.Write(input); err != nil {
		return s.failed(p, offset, data, fmt.Errorf("writing to %s: %w", s.path, err))
	}
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				return s.failed(p, offset, data, errors.New("input rejected"))
			}
			if line == marker {
				return nil
			}
		case <-ctx.Done():
			return s.failed(p, offset, data, context.Cause(ctx))
		}
	}
}

// start starts a process in the session's namespace.
func (s *restoreSession) start() (*sessionProcess, error) {
	cmd := exec.Command(s.path, "-w", strconv.Itoa(waitSeconds), "-v", "--noflush")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", s.path, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", s.path, err)
	}
	p := &sessionProcess{cmd: cmd, stdin: stdin, lines: make(chan string, 16), stderr: &lockedBuffer{}}
	cmd.Stderr = p.stderr
	if err := s.ns.do(cmd.Start); err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", s.path, s.ns, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	return p, nil
}

// exited reports whether the process ended while idle (killed by someone, say): its stdout
// reached EOF. Stray output lines read here are dropped; only acknowledgements matter.
func (p *sessionProcess) exited() bool {
	for {
		select {
		case _, ok := <-p.lines:
			if !ok {
				return true
			}
		default:
			return false
		}
	}
}

// reap ends the process (which may have exited already) and waits for it.
func (p *sessionProcess) reap() error {
	p.stdin.Close()
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Kill()
	}
	for range p.lines { // drain until the reader sees EOF
	}
	return p.cmd.Wait()
}

// failed ends p and returns the error of the restore of data, whose lines start after offset
// lines of p's input.
func (s *restoreSession) failed(p *sessionProcess, offset int, data []byte, cause error) error {
	s.proc = nil
	waitErr := p.reap()
	msg := describeRestoreError(p.stderr.String(), data, offset)
	return fmt.Errorf("running %s -v --noflush in %s: %w (%v): %s", s.path, s.ns, cause, waitErr, msg)
}

// close ends the session's process, if any, by closing its input.
func (s *restoreSession) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		s.proc.stdin.Close()
		s.proc.cmd.Wait()
		s.proc = nil
	}
}
