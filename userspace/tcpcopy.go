package userspace

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
)

// copyBufferSize is the size of one pooled copy buffer. On this project's kernels a read/write
// copy through 32 KiB buffers moved 1.6–1.8× the bytes per second of io.Copy's splice between
// two TCP sockets (1 MiB pipes), and larger buffers gained nothing (see doc.go).
const copyBufferSize = 32 << 10

// copyBuffers holds the copy buffers not in use. A direction takes one only once its source
// has data and gives it back after writing it, so idle connections hold no buffer and the
// memory of the copies is bounded by copyBufferSize per direction that is moving data.
var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, copyBufferSize)
	return &b
}}

// copyStream copies src to dst until src ends (io.EOF) or either side fails, adding each
// chunk's size to counter. It returns the error that ended the copy.
func copyStream(dst, src *net.TCPConn, counter prometheus.Counter) error {
	raw, err := src.SyscallConn()
	if err != nil {
		return err
	}
	for {
		buf, n, err := readPooled(raw)
		if n > 0 {
			_, werr := dst.Write((*buf)[:n])
			counter.Add(float64(n))
			if werr != nil {
				copyBuffers.Put(buf)
				return werr
			}
		}
		if buf != nil {
			copyBuffers.Put(buf)
		}
		if err != nil {
			return err
		}
	}
}

// readPooled waits until raw's socket is readable, then reads once into a pooled buffer that
// the caller gives back. n == 0 with io.EOF is the peer's FIN.
func readPooled(raw syscall.RawConn) (buf *[]byte, n int, err error) {
	var readErr error
	waitErr := raw.Read(func(fd uintptr) bool {
		b := copyBuffers.Get().(*[]byte)
		for {
			n, readErr = syscall.Read(int(fd), *b)
			if !errors.Is(readErr, syscall.EINTR) {
				break
			}
		}
		if errors.Is(readErr, syscall.EAGAIN) {
			copyBuffers.Put(b)
			return false // nothing yet: wait for readability without a buffer
		}
		buf = b
		return true
	})
	switch {
	case waitErr != nil:
		return buf, 0, waitErr
	case readErr != nil:
		return buf, 0, readErr
	case n == 0:
		return buf, 0, io.EOF
	}
	return buf, n, nil
}
