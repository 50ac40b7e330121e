package userspace

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		c, _ := ln.AcceptTCP()
		accepted <- c
	}()
	client, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestCopyStreamMovesEveryByte sends a bulk stream (several splice chunks) and then
// a few small writes through copyStream, and checks the bytes, their order, the counter and
// that the copy ends with io.EOF at the sender's FIN.
func TestCopyStreamMovesEveryByte(t *testing.T) {
	srcWriter, src := tcpPair(t)
	dst, dstReader := tcpPair(t)
	payload := make([]byte, 3<<20+123)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _ = srcWriter.Write(payload)
		for _, small := range []string{"a", "bc", "def"} {
			_, _ = srcWriter.Write([]byte(small))
		}
		_ = srcWriter.CloseWrite()
	}()
	counter := prometheus.NewCounter(prometheus.CounterOpts{Name: "copied_bytes"})
	done := make(chan error, 1)
	go func() {
		err := copyStream(dst, src, counter)
		_ = dst.CloseWrite()
		done <- err
	}()
	got, err := io.ReadAll(dstReader)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, io.EOF) {
		t.Fatalf("copyStream ended with %v, want io.EOF", err)
	}
	want := append(payload, "abcdef"...)
	if !bytes.Equal(got, want) {
		t.Fatalf("received %d bytes, want %d identical ones", len(got), len(want))
	}
	if c := testutil.ToFloat64(counter); c != float64(len(want)) {
		t.Fatalf("counter = %v, want %d", c, len(want))
	}
}
