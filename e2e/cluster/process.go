package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RunEnv is the environment variable set to the run ID on every process a run starts. Children
// inherit it, so the leak check and the teardown sweep find grandchildren too.
const RunEnv = "NODEPROXY_E2E_RUN"

// defaultStopGrace is how long a process gets between SIGTERM and SIGKILL.
const defaultStopGrace = 5 * time.Second

// Process is a long-running command started inside a network namespace by StartProcess.
// Its stdout and stderr go to LogPath.
type Process struct {
	// Name identifies the process in logs and errors, e.g. "kube-apiserver" or "proxy-node-a".
	Name string
	// NS is the named network namespace it runs in.
	NS string
	// LogPath is the file receiving its output.
	LogPath string

	cmd     *exec.Cmd
	grace   time.Duration
	done    chan struct{}
	waitErr error
}

// Pid returns the process ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and its wait error if so.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL after a grace period, and waits for
// the process to exit. Stopping an exited process is a no-op.
func (p *Process) Stop() error {
	if exited, _ := p.Exited(); exited {
		return nil
	}
	pgid := -p.cmd.Process.Pid
	if err := syscall.Kill(pgid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("sending SIGTERM to %s: %w", p.Name, err)
	}
	select {
	case <-p.done:
	case <-time.After(p.grace):
		if err := syscall.Kill(pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("sending SIGKILL to %s: %w", p.Name, err)
		}
		<-p.done
	}
	// Anything left in its process group (children that ignored SIGTERM) goes too.
	_ = syscall.Kill(pgid, syscall.SIGKILL)
	return nil
}

// LogTail returns the last n lines of the process's output.
func (p *Process) LogTail(n int) string {
	return fileTail(p.LogPath, n)
}

// processSet starts processes for one run and stops them all at the end.
type processSet struct {
	runID  string
	logDir string
	// grace is the time between SIGTERM and SIGKILL; zero means defaultStopGrace.
	grace time.Duration

	mu        sync.Mutex
	processes []*Process
	stopped   bool
}

// start runs argv inside the named network namespace (via `ip netns exec`, which execs argv, so
// the PID is the command's own) in a new process group, with output appended to
// logDir/<name>.log and RunEnv set in its environment.
func (s *processSet) start(nsName, name string, argv ...string) (*Process, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("starting %s: empty command", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil, fmt.Errorf("starting %s: the run is being torn down", name)
	}
	logPath := filepath.Join(s.logDir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the log of %s: %w", name, err)
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "=== %s: %s (netns %s)\n", time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "), nsName)
	cmd := exec.Command("ip", append([]string{"netns", "exec", nsName}, argv...)...)
	cmd.Env = append(os.Environ(), RunEnv+"="+s.runID)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	grace := s.grace
	if grace == 0 {
		grace = defaultStopGrace
	}
	p := &Process{Name: name, NS: nsName, LogPath: logPath, cmd: cmd, grace: grace, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	s.processes = append(s.processes, p)
	return p, nil
}

// stopAll stops every process, newest first, then kills whatever still carries the run's
// marker (descendants that left the process group). No process can be started afterwards.
func (s *processSet) stopAll() error {
	s.mu.Lock()
	s.stopped = true
	processes := append([]*Process(nil), s.processes...)
	s.mu.Unlock()
	var errs []error
	for i := len(processes) - 1; i >= 0; i-- {
		if err := processes[i].Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := killMarked(s.runID); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// fileTail returns the last n lines of a file, or a note saying why it cannot.
func fileTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
