package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lesismal/nbio"
)

// TLS (Config.TLSCert, Config.TLSKey) sits between the engine and a
// connection's HTTP and WebSocket reading. The handshake is the standard
// library's crypto/tls; after it, a TLS 1.3 connection with AES-GCM runs
// the record layer itself (tlsrecord.go), and crypto/tls is dropped with
// every buffer it grew:
//
//   - The handshake runs on a goroutine of its own (at most MaxHandshakes at
//     once, as every socket before its upgrade), reading from a pipe that
//     the poller fills: crypto/tls's handshake cannot be suspended and
//     resumed, so it needs a goroutine that may block. It ends with the
//     handshake, within HandshakeTimeout. The pipe hands crypto/tls at
//     most one client record per read, so when the handshake returns it
//     has read exactly through the client's Finished.
//   - The traffic secrets come from crypto/tls's key log (a KeyLogWriter
//     of the connection's own, set through GetConfigForClient). The
//     server's first record continues the sequence after the
//     NewSessionTickets crypto/tls sent under the application key; the
//     pipe counts them by opening each record crypto/tls writes.
//   - After the handshake, no goroutine: the poller decrypts complete
//     records on its own goroutine (readRecords) and hands the plaintext
//     on; writes (the 101, refusals, the flushers' writes) are sealed
//     into records and written with one non-blocking write. A KeyUpdate
//     is honoured (and costs a token of the client's message rate),
//     close_notify closes, a record that does not open closes with
//     bad_record_mac.
//   - TLS 1.2 and CHACHA20_POLY1305 connections keep crypto/tls's record
//     layer, as does any connection whose handshake did not go as
//     expected (tether_tls_record_layer_total counts each mode): the pipe
//     answers "would block" (a temporary net.Error, after which
//     crypto/tls keeps its state) when the ciphertext runs out mid-record.
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
// each handshake. Each handshake gets a copy with a KeyLogWriter of its
// own (GetConfigForClient), through which crypto/tls hands the
// connection its traffic secrets; session tickets stay encrypted with
// this configuration's keys (crypto/tls takes them from the original
// configuration), so resumption works across connections.
func newTLSConfig(cert *atomic.Pointer[tls.Certificate]) *tls.Config {
	base := &tls.Config{
		MinVersion: tlsMinVersion,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cert.Load(), nil
		},
	}
	base.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		p, ok := hi.Conn.(tlsPipe)
		if !ok {
			return nil, nil
		}
		cfg := base.Clone()
		cfg.GetConfigForClient = nil
		cfg.KeyLogWriter = keyLog{p.t}
		return cfg, nil
	}
	return base
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
//
// Memory: after the handshake an idle TLS 1.3 AES-GCM connection holds
// this struct and its ownRecords (two AEADs, IVs, sequence numbers,
// secrets) and nothing of crypto/tls.
type tlsConn struct {
	c *conn // immutable

	// Set by newTLSConn; written once more by the handshake goroutine
	// before the first plaintext is handed on (switchRecords), so every
	// writer, which writes in answer to plaintext, sees its final value.
	tc  *tls.Conn   // nil once the record layer is our own
	rec *ownRecords // non-nil once the record layer is our own

	// hs is the handshake's state, owned by the handshake goroutine
	// (pipe reads and writes, the key log); nil after the handshake.
	hs *tlsHandshake

	mu         sync.Mutex    // guards in, handshaken, closed, wake
	in         []byte        // ciphertext received and not yet read
	handshaken bool          // the handshake is over: the pipe no longer blocks
	closed     bool          // the socket closed: the pipe answers EOF
	wake       chan struct{} // the handshake goroutine waits on it; nil after the handshake

	// readMu makes one goroutine at a time decrypt and hand the plaintext
	// on (the handshake goroutine once, then the poller), so the
	// connection's readers see their bytes in order.
	readMu sync.Mutex
}

// tlsHandshake is what the switch to our own record layer needs from
// the handshake. Owned by the handshake goroutine.
type tlsHandshake struct {
	clientSecret []byte // CLIENT_TRAFFIC_SECRET_0, from the key log
	serverSecret []byte // SERVER_TRAFFIC_SECRET_0

	// recordLeft is what is left of the client record the pipe is
	// handing crypto/tls: the pipe never hands it bytes past a record's
	// end, so when the handshake returns it has read exactly through the
	// client's Finished and what follows is still in tlsConn.in.
	// Guarded by tlsConn.mu.
	recordLeft int

	// serverTrial opens, with the server's application key, each record
	// crypto/tls writes after that key is known: those that open are the
	// NewSessionTickets of its first flight, and their count is the
	// sequence number our first record continues from (serverTrial.seq).
	serverTrial    trafficKeys
	serverTrialSet bool
	outBroken      bool // the records written were not as expected: keep crypto/tls
}

// ownRecords is the TLS 1.3 record layer of a connection after the
// handshake (tlsrecord.go): RFC 8446 §5 in user space, what kernel TLS
// would do in the kernel.
type ownRecords struct {
	rx trafficKeys // owned by the read path (tlsConn.readMu)

	txMu sync.Mutex  // guards tx; a leaf: only nbio's Write is called under it
	tx   trafficKeys // the sequence number advances with every record written
}

// newTLSConn starts the TLS layer of c and its handshake.
func (s *Server) newTLSConn(c *conn) *tlsConn {
	t := &tlsConn{c: c, wake: make(chan struct{}, 1), hs: &tlsHandshake{}}
	t.tc = tls.Server(tlsPipe{t}, s.tlsConfig)
	s.goroutines.start("tls-handshake", t.handshake)
	return t
}

// handshake runs the handshake, moves the connection to our own record
// layer when it can, and then reads what came with the handshake.
func (t *tlsConn) handshake() {
	s := t.c.srv
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HandshakeTimeout)
	defer cancel()
	if err := t.tc.HandshakeContext(ctx); err != nil {
		s.m.tlsHandshakeErrors.Inc()
		s.log.Debug("TLS handshake failed", "remote", t.c.nc.RemoteAddr().String(), "err", err)
		t.hs = nil
		_ = t.c.nc.Close()
		return
	}
	mode := t.switchRecords()
	s.m.tlsRecordLayer[mode].Inc()
	t.read(nil)
}

// Record layer modes, the label of tether_tls_record_layer_total.
const (
	recordLayerOwn       = "own"        // TLS 1.3 with AES-GCM: ours
	recordLayerCryptoTLS = "crypto_tls" // TLS 1.2, CHACHA20_POLY1305: crypto/tls's
	recordLayerFallback  = "fallback"   // ours could have been used but something did not add up
)

// switchRecords ends the handshake: for TLS 1.3 with AES-GCM it derives
// the traffic keys from the secrets of the key log and drops the
// tls.Conn, with every buffer it grew; otherwise the tls.Conn stays.
// It returns the mode chosen.
func (t *tlsConn) switchRecords() string {
	hs := t.hs
	st := t.tc.ConnectionState()
	mode := recordLayerCryptoTLS
	var rec *ownRecords
	if _, _, ok := recordSuiteHash(st.CipherSuite); ok && st.Version == tls.VersionTLS13 {
		mode = recordLayerFallback
		rec = &ownRecords{}
		if hs.clientSecret == nil || !hs.serverTrialSet || hs.outBroken ||
			hs.serverTrial.suite != st.CipherSuite ||
			rec.rx.setSecret(st.CipherSuite, hs.clientSecret) != nil ||
			rec.tx.setSecret(st.CipherSuite, hs.serverSecret) != nil {
			rec = nil
		} else {
			rec.tx.seq = hs.serverTrial.seq
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if rec != nil && hs.recordLeft == 0 {
		mode = recordLayerOwn
		t.rec, t.tc = rec, nil
	}
	t.hs = nil
	t.wake = nil
	t.handshaken = true
	return mode
}

// keyLog receives the handshake's secrets from crypto/tls
// (Config.KeyLogWriter, one line per Write in the NSS key log format:
// label, client random, secret, in hex). It keeps the TLS 1.3 traffic
// secrets and ignores the rest.
type keyLog struct{ t *tlsConn }

func (k keyLog) Write(line []byte) (int, error) {
	hs := k.t.hs
	f := bytes.Fields(line)
	if hs == nil || len(f) != 3 {
		return len(line), nil
	}
	secret, err := hex.AppendDecode(nil, f[2])
	if err != nil {
		return len(line), nil
	}
	switch string(f[0]) {
	case "CLIENT_TRAFFIC_SECRET_0":
		hs.clientSecret = secret
	case "SERVER_TRAFFIC_SECRET_0":
		hs.serverSecret = secret
		// The suite is not known yet; the secret's length tells the
		// AES-GCM one that would match. switchRecords checks it.
		suite := uint16(tls.TLS_AES_128_GCM_SHA256)
		if len(secret) == 48 {
			suite = tls.TLS_AES_256_GCM_SHA384
		}
		hs.serverTrialSet = hs.serverTrial.setSecret(suite, secret) == nil
	}
	return len(line), nil
}

// watchWritten looks at the records crypto/tls writes during the
// handshake and counts those sealed with the server's application key
// (see tlsHandshake.serverTrial). Each write holds whole records
// (crypto/tls flushes its flight at once); anything else marks the
// connection to keep crypto/tls.
func (hs *tlsHandshake) watchWritten(b []byte) {
	for len(b) > 0 && !hs.outBroken {
		typ, n, ok, err := parseRecordHeader(b)
		if !ok || err != nil || n > len(b) {
			hs.outBroken = true
			return
		}
		rec := b[:n]
		b = b[n:]
		if typ != recordApplicationData || !hs.serverTrialSet {
			continue
		}
		scratch := make([]byte, 0, n)
		if _, _, err := hs.serverTrial.open(scratch, rec); err != nil && hs.serverTrial.seq > 0 {
			hs.outBroken = true // a record under another key after the application key
		}
	}
}

// onData takes ciphertext from the poller.
func (t *tlsConn) onData(data []byte) {
	t.mu.Lock()
	if !t.handshaken {
		t.in = append(t.in, data...)
		wake := t.wake
		t.mu.Unlock()
		select {
		case wake <- struct{}{}:
		default:
		}
		return
	}
	t.mu.Unlock()
	t.read(data)
}

// onClose ends the pipe: a handshake waiting for bytes ends with EOF.
func (t *tlsConn) onClose() {
	t.mu.Lock()
	t.closed = true
	t.in = nil
	wake := t.wake
	t.mu.Unlock()
	select {
	case wake <- struct{}{}:
	default:
	}
}

// plainPool holds the buffers records are decrypted into. A TLS record
// holds at most 16 KiB of plaintext (and its inner content type); one
// that claims more is refused, but opening it must not allocate.
var plainPool = sync.Pool{New: func() any { return new([maxRecordCiphertext]byte) }}

// read decrypts every complete record, data (from the poller) after
// what is kept in t.in, and hands the plaintext to the connection, until
// the ciphertext runs out.
func (t *tlsConn) read(data []byte) {
	t.readMu.Lock()
	defer t.readMu.Unlock()
	buf := plainPool.Get().(*[maxRecordCiphertext]byte)
	defer plainPool.Put(buf)
	if t.rec != nil {
		t.readRecords(data, buf)
		return
	}
	if len(data) > 0 {
		t.mu.Lock()
		t.in = append(t.in, data...)
		t.mu.Unlock()
	}
	for {
		n, err := t.tc.Read(buf[:16<<10])
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

// readRecords is read on our own record layer. t.readMu is held.
func (t *tlsConn) readRecords(data []byte, buf *[maxRecordCiphertext]byte) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	src, fromData := data, true
	if len(t.in) > 0 {
		t.in = append(t.in, data...)
		src, fromData = t.in, false
	}
	t.mu.Unlock()
	for {
		typ, n, ok, err := parseRecordHeader(src)
		if err == nil && ok && typ != recordApplicationData {
			err = errRecordUnexpected // no plaintext records after the handshake (§5)
		}
		if err != nil {
			t.fail(err)
			return
		}
		if !ok || n > len(src) {
			break
		}
		content, ctype, err := t.rec.rx.open(buf[:], src[:n])
		src = src[n:]
		if err == nil {
			err = t.onRecord(ctype, content)
		}
		if err != nil {
			t.fail(err)
			return
		}
	}
	t.mu.Lock()
	switch {
	case t.closed || len(src) == 0:
		t.in = nil // an idle connection holds no buffer
	case fromData:
		t.in = append([]byte(nil), src...) // the poller's buffer is not ours to keep
	default:
		t.in = src
	}
	t.mu.Unlock()
}

// errCloseNotify ends a connection whose client sent close_notify.
var errCloseNotify = errors.New("tls: close_notify")

// onRecord acts on the content of one record the client sent.
func (t *tlsConn) onRecord(ctype byte, content []byte) error {
	switch ctype {
	case recordApplicationData:
		if len(content) > 0 {
			t.c.onPlain(content)
		}
		return nil
	case recordAlert:
		if len(content) == 2 && content[1] == alertCloseNotify {
			return errCloseNotify
		}
		return errRecordAlert
	case recordHandshake:
		return t.onKeyUpdate(content)
	}
	return errRecordUnexpected
}

// errRecordAlert is a client's alert other than close_notify.
var errRecordAlert = errors.New("tls record: alert from the client")

// errKeyUpdateRate is a KeyUpdate over the client's message rate.
var errKeyUpdateRate = errors.New("tls record: KeyUpdates over the message rate")

// onKeyUpdate handles a post-handshake handshake record. The only one a
// client may send us is KeyUpdate (we never ask for post-handshake
// authentication), and it must end its record (§5.1), so the record must
// be exactly one KeyUpdate. Each costs a token of the client's message
// rate (Config.ClientMsgRate), as a message would.
func (t *tlsConn) onKeyUpdate(m []byte) error {
	if len(m) != 5 || m[0] != handshakeKeyUpdate || m[1] != 0 || m[2] != 0 || m[3] != 1 || m[4] > 1 {
		return errRecordUnexpected
	}
	if !t.c.allow(time.Now().UnixNano()) {
		return errKeyUpdateRate
	}
	if err := t.rec.rx.update(); err != nil {
		return err
	}
	if m[4] == 0 { // update_not_requested
		return nil
	}
	// update_requested: our KeyUpdate goes out under the current key,
	// before any other record, and everything after it under the next.
	r := t.rec
	r.txMu.Lock()
	defer r.txMu.Unlock()
	if _, err := r.writeLocked(t.c.nc, []byte{handshakeKeyUpdate, 0, 0, 1, 0}, recordHandshake); err != nil {
		return err
	}
	return r.tx.update()
}

// fail closes the connection after a record error, with an alert when
// one applies, and counts it.
func (t *tlsConn) fail(err error) {
	m := t.c.srv.m
	var alert byte
	switch {
	case errors.Is(err, errCloseNotify):
		alert = alertCloseNotify
	case errors.Is(err, errRecordBadMAC):
		alert = alertBadRecordMAC
		m.tlsRecordErrors["bad_record_mac"].Inc()
	case errors.Is(err, errRecordOverflow):
		alert = alertRecordOverflow
		m.tlsRecordErrors["record_overflow"].Inc()
	case errors.Is(err, errRecordAlert):
		m.tlsRecordErrors["alert"].Inc()
		_ = t.c.nc.Close() // the client ended it: nothing to answer
		return
	case errors.Is(err, errKeyUpdateRate):
		alert = alertUnexpectedMessage
		m.tlsRecordErrors["key_update_rate"].Inc()
	default:
		alert = alertUnexpectedMessage
		m.tlsRecordErrors["unexpected_message"].Inc()
	}
	t.c.srv.log.Debug("TLS record error", "remote", t.c.nc.RemoteAddr().String(), "err", err)
	t.closeWithAlert(alert)
}

// closeWithAlert sends an alert (close_notify as a warning, anything
// else as fatal) when the record layer is ours, and closes the socket.
func (t *tlsConn) closeWithAlert(alert byte) {
	if r := t.rec; r != nil {
		level := byte(2)
		if alert == alertCloseNotify {
			level = 1
		}
		r.txMu.Lock()
		_, _ = r.writeLocked(t.c.nc, []byte{level, alert}, recordAlert)
		r.txMu.Unlock()
	}
	_ = t.c.nc.Close()
}

// write writes b to the socket as application data. It does not block.
func (t *tlsConn) write(b []byte) (int, error) {
	r := t.rec
	if r == nil {
		return t.tc.Write(b)
	}
	r.txMu.Lock()
	defer r.txMu.Unlock()
	return r.writeLocked(t.c.nc, b, recordApplicationData)
}

// sealPool holds the buffers records are sealed into before one write
// to the socket (nbio copies what the socket does not take at once).
var sealPool = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledSeal is the largest sealing buffer kept for reuse: a
// flusher's coalesced write, sealed.
const maxPooledSeal = maxCoalesce + maxCoalesce/maxRecordPlaintext*recordOverhead + recordOverhead

// writeLocked seals p as records of type typ and writes them in one
// write; the sequence number advances only if the socket took them.
// r.txMu is held.
func (r *ownRecords) writeLocked(nc *nbio.Conn, p []byte, typ byte) (int, error) {
	bp := sealPool.Get().(*[]byte)
	out, records := r.tx.seal((*bp)[:0], p, typ)
	_, err := nc.Write(out)
	if cap(out) <= maxPooledSeal {
		*bp = out[:0]
	}
	sealPool.Put(bp)
	if err != nil {
		return 0, err
	}
	r.tx.commit(records)
	return len(p), nil
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

// Read hands crypto/tls the ciphertext received. During the handshake it
// blocks for more and never hands out bytes past the end of the current
// record (tlsHandshake.recordLeft); after it, it answers errWouldBlock
// when there is none.
func (p tlsPipe) Read(b []byte) (int, error) {
	t := p.t
	t.mu.Lock()
	for {
		if t.closed {
			t.mu.Unlock()
			return 0, io.EOF
		}
		hs := t.hs
		if hs != nil && hs.recordLeft == 0 && len(t.in) >= recordHeaderLen {
			hs.recordLeft = recordHeaderLen + int(binary.BigEndian.Uint16(t.in[3:5]))
		}
		if len(t.in) > 0 && (hs == nil || hs.recordLeft > 0) {
			break
		}
		if t.handshaken {
			t.mu.Unlock()
			return 0, errWouldBlock
		}
		wake := t.wake
		t.mu.Unlock()
		<-wake // the handshake goroutine waits; onData or onClose wakes it
		t.mu.Lock()
	}
	avail := t.in
	if hs := t.hs; hs != nil {
		avail = avail[:min(len(avail), hs.recordLeft)]
	}
	n := copy(b, avail)
	if hs := t.hs; hs != nil {
		hs.recordLeft -= n
	}
	t.in = t.in[n:]
	if len(t.in) == 0 {
		t.in = nil // give the buffer back: an idle connection holds none
	}
	t.mu.Unlock()
	return n, nil
}

// Write writes crypto/tls's records to the socket; during the handshake
// it also watches them (tlsHandshake.watchWritten).
func (p tlsPipe) Write(b []byte) (int, error) {
	if hs := p.t.hs; hs != nil {
		hs.watchWritten(b)
	}
	return p.t.c.nc.Write(b)
}

func (p tlsPipe) Close() error                     { return p.t.c.nc.Close() }
func (p tlsPipe) LocalAddr() net.Addr              { return p.t.c.nc.LocalAddr() }
func (p tlsPipe) RemoteAddr() net.Addr             { return p.t.c.nc.RemoteAddr() }
func (p tlsPipe) SetDeadline(time.Time) error      { return nil }
func (p tlsPipe) SetReadDeadline(time.Time) error  { return nil }
func (p tlsPipe) SetWriteDeadline(time.Time) error { return nil }
