package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// TLS (Config.TLSCert, Config.TLSKey) sits between the engine and a
// connection's HTTP and WebSocket reading, on the standard library's
// crypto/tls:
//
//   - The handshake runs on a goroutine of its own (at most MaxHandshakes at
//     once, as every socket before its upgrade), reading from a pipe that
//     the poller fills: crypto/tls's handshake cannot be suspended and
//     resumed, so it needs a goroutine that may block. It ends with the
//     handshake, within HandshakeTimeout.
//   - After it, no goroutine: the poller appends the ciphertext it reads to
//     the pipe and decrypts what is complete on its own goroutine; the pipe
//     answers "would block" (a temporary net.Error, after which crypto/tls
//     keeps its state) when the ciphertext runs out mid-record.
//   - Every write of the connection (the 101, refusals, the flushers'
//     writes) goes through the tls.Conn, which encrypts and hands the
//     records to the engine's non-blocking write.
//
// The certificate is read again on ReloadTLS (SIGHUP in the binary): new
// handshakes use the new one; open connections keep theirs.

// tlsMinVersion is the oldest protocol version the server accepts.
const tlsMinVersion = tls.VersionTLS12

// loadCertificate reads the PEM certificate chain and key.
func loadCertificate(certFile, keyFile string) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("cannot load TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	return &cert, nil
}

// newTLSConfig returns the server's TLS configuration: TLS 1.2 or later
// with Go's default cipher suites (AEAD only for 1.2, in Go's preference
// order), HTTP/1.1 by ALPN, and the certificate cert holds at the time of
// each handshake.
func newTLSConfig(cert *atomic.Pointer[tls.Certificate]) *tls.Config {
	return &tls.Config{
		MinVersion: tlsMinVersion,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cert.Load(), nil
		},
	}
}

// ReloadTLS reads the certificate and key files again. Handshakes after it
// use the new certificate; open connections are not touched. It returns an
// error, and keeps the old certificate, if the files cannot be loaded or
// the server has no TLS.
func (s *Server) ReloadTLS() error {
	if s.tlsConfig == nil {
		return errors.New("server: TLS is not configured")
	}
	cert, err := loadCertificate(s.cfg.TLSCert, s.cfg.TLSKey)
	if err != nil {
		return err
	}
	s.cert.Store(cert)
	s.log.Info("TLS certificate reloaded", "cert", s.cfg.TLSCert)
	return nil
}

// tlsConn is the TLS layer of one socket.
type tlsConn struct {
	c  *conn     // immutable
	tc *tls.Conn // immutable

	mu         sync.Mutex // guards in, handshaken, closed
	in         []byte     // ciphertext received and not yet read by tc
	handshaken bool       // the handshake is over: the pipe no longer blocks
	closed     bool       // the socket closed: the pipe answers EOF
	wake       chan struct{}

	// readMu makes one goroutine at a time decrypt and hand the plaintext
	// on (the handshake goroutine once, then the poller), so the
	// connection's readers see their bytes in order.
	readMu sync.Mutex
}

// newTLSConn starts the TLS layer of c and its handshake.
func (s *Server) newTLSConn(c *conn) *tlsConn {
	t := &tlsConn{c: c, wake: make(chan struct{}, 1)}
	t.tc = tls.Server(tlsPipe{t}, s.tlsConfig)
	s.goroutines.start("tls-handshake", t.handshake)
	return t
}

// handshake runs the handshake and then reads what came with it.
func (t *tlsConn) handshake() {
	s := t.c.srv
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
	defer cancel()
	if err := t.tc.HandshakeContext(ctx); err != nil {
		s.m.tlsHandshakeErrors.Inc()
		s.log.Debug("TLS handshake failed", "remote", t.c.nc.RemoteAddr().String(), "err", err)
		_ = t.c.nc.Close()
		return
	}
	t.mu.Lock()
	t.handshaken = true
	t.mu.Unlock()
	t.read()
}

// onData takes ciphertext from the poller.
func (t *tlsConn) onData(data []byte) {
	t.mu.Lock()
	t.in = append(t.in, data...)
	handshaken := t.handshaken
	t.mu.Unlock()
	if !handshaken {
		select {
		case t.wake <- struct{}{}:
		default:
		}
		return
	}
	t.read()
}

// onClose ends the pipe: a handshake waiting for bytes ends with EOF.
func (t *tlsConn) onClose() {
	t.mu.Lock()
	t.closed = true
	t.in = nil
	t.mu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// plainPool holds the buffers records are decrypted into. A TLS record
// holds at most 16 KiB of plaintext.
var plainPool = sync.Pool{New: func() any { return new([16 << 10]byte) }}

// read decrypts every complete record and hands the plaintext to the
// connection, until the ciphertext runs out.
func (t *tlsConn) read() {
	t.readMu.Lock()
	defer t.readMu.Unlock()
	buf := plainPool.Get().(*[16 << 10]byte)
	defer plainPool.Put(buf)
	for {
		n, err := t.tc.Read(buf[:])
		if n > 0 {
			t.c.onPlain(buf[:n])
		}
		if err != nil {
			if !errors.Is(err, errWouldBlock) {
				_ = t.c.nc.Close()
			}
			return
		}
	}
}

// errWouldBlock is the pipe's answer when it has no ciphertext after the
// handshake. crypto/tls keeps a record it has partly read when its reader
// fails with a temporary net.Error, and Read returns the error.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "tls pipe: no data yet" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// tlsPipe is the net.Conn crypto/tls reads ciphertext from and writes
// records to.
type tlsPipe struct{ t *tlsConn }

func (p tlsPipe) Read(b []byte) (int, error) {
	t := p.t
	t.mu.Lock()
	for len(t.in) == 0 {
		if t.closed {
			t.mu.Unlock()
			return 0, io.EOF
		}
		if t.handshaken {
			t.mu.Unlock()
			return 0, errWouldBlock
		}
		t.mu.Unlock()
		<-t.wake // the handshake goroutine waits; onData or onClose wakes it
		t.mu.Lock()
	}
	n := copy(b, t.in)
	t.in = t.in[n:]
	if len(t.in) == 0 {
		t.in = nil // give the buffer back: an idle connection holds none
	}
	t.mu.Unlock()
	return n, nil
}

func (p tlsPipe) Write(b []byte) (int, error)      { return p.t.c.nc.Write(b) }
func (p tlsPipe) Close() error                     { return p.t.c.nc.Close() }
func (p tlsPipe) LocalAddr() net.Addr              { return p.t.c.nc.LocalAddr() }
func (p tlsPipe) RemoteAddr() net.Addr             { return p.t.c.nc.RemoteAddr() }
func (p tlsPipe) SetDeadline(time.Time) error      { return nil }
func (p tlsPipe) SetReadDeadline(time.Time) error  { return nil }
func (p tlsPipe) SetWriteDeadline(time.Time) error { return nil }
