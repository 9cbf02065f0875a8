// Package testutil holds helpers for tether's tests: real redis-server
// processes (standalone and cluster), HAProxy and nginx in front of test
// nodes, wait helpers and a goroutine-leak check. It is imported by tests
// only.
//
// Where to find:
//
//	redis.go  redis-server (standalone, cluster, cluster with replicas),
//	          free ports, skip-or-fail when a binary is missing
//	lb.go     haproxy and nginx from a config template
//	tlsca.go  a test certificate authority and server certificate files
//	wait.go   Eventually, CheckGoroutines
package testutil

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startTimeout bounds how long a redis-server may take to answer PING.
const startTimeout = 10 * time.Second

// Redis is a redis-server process owned by one test. It listens on a free
// TCP port of 127.0.0.1 and on a unix socket in the test's temporary
// directory, saves nothing to disk, and is killed when the test ends.
// Its methods are safe for concurrent use.
type Redis struct {
	// Immutable after StartRedis.
	tb     testing.TB
	port   int
	dir    string
	sock   string
	args   []string
	client *redis.Client

	mu     sync.Mutex // guards cmd and paused
	cmd    *exec.Cmd
	paused bool
}

// redisPath returns the path of the redis-server binary, or skips the test
// (fails it when CI=true) when there is none.
func redisPath(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("%s not found on PATH: install it (Debian: apt-get install redis-server) to run this test", name)
	if os.Getenv("CI") == "true" {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
	return ""
}

// StartRedis starts a redis-server for the test and waits until it answers
// PING. args are extra redis-server arguments such as "--maxmemory", "10mb".
// The server is killed in tb.Cleanup. Without redis-server on PATH the test
// is skipped, or failed when the environment variable CI is "true".
func StartRedis(tb testing.TB, args ...string) *Redis {
	tb.Helper()
	redisPath(tb, "redis-server")
	dir := tb.TempDir()
	r := &Redis{
		tb:   tb,
		port: FreePort(tb),
		dir:  dir,
		sock: filepath.Join(dir, "r.sock"),
		args: args,
	}
	r.client = redis.NewClient(&redis.Options{
		Addr:            r.Addr(),
		Protocol:        2,
		DisableIdentity: true,
		MaxRetries:      -1,
		DialTimeout:     time.Second,
		ReadTimeout:     2 * time.Second,
		PoolSize:        2,
	})
	tb.Cleanup(func() {
		r.kill()
		_ = r.client.Close()
	})
	if err := r.start(); err != nil {
		tb.Fatal(err)
	}
	return r
}

// Addr returns the server's TCP address, host:port.
func (r *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// URL returns a redis:// URL of the server's database 0, as accepted by
// go-redis' ParseURL and by bus.RedisConfig.URL.
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }

// Socket returns the path of the server's unix socket.
func (r *Redis) Socket() string { return r.sock }

// Client returns a client of the server owned by r; do not close it.
func (r *Redis) Client() *redis.Client { return r.client }

func (r *Redis) start() error {
	args := []string{
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--unixsocket", r.sock,
		"--save", "",
		"--appendonly", "no",
		"--dir", r.dir,
		"--daemonize", "no",
		"--protected-mode", "no",
		"--logfile", filepath.Join(r.dir, "redis.log"),
	}
	args = append(args, r.args...)
	cmd := exec.Command("redis-server", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cannot start redis-server: %w", err)
	}
	r.mu.Lock()
	r.cmd = cmd
	r.paused = false
	r.mu.Unlock()
	if err := waitPing(r.Addr(), startTimeout); err != nil {
		log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
		r.kill()
		return fmt.Errorf("redis-server on %s did not answer: %w\n%s", r.Addr(), err, log)
	}
	return nil
}

// kill ends the process (resuming it first when paused) and waits for it.
func (r *Redis) kill() {
	r.mu.Lock()
	cmd, paused := r.cmd, r.paused
	r.cmd, r.paused = nil, false
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	if paused {
		_ = cmd.Process.Signal(syscall.SIGCONT)
	}
	_ = cmd.Wait()
}

// Stop kills the server. Its port stays reserved for Restart.
func (r *Redis) Stop() { r.kill() }

// Restart starts the server again on the same port, with no data. It stops
// the running server first, if any.
func (r *Redis) Restart() {
	r.tb.Helper()
	r.kill()
	if err := r.start(); err != nil {
		r.tb.Fatal(err)
	}
}

// Pause stops the server process with SIGSTOP: connections stay open but
// nothing is answered until Resume.
func (r *Redis) Pause() { r.signal(syscall.SIGSTOP, true) }

// Resume continues a paused server with SIGCONT.
func (r *Redis) Resume() { r.signal(syscall.SIGCONT, false) }

func (r *Redis) signal(sig syscall.Signal, paused bool) {
	r.tb.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		r.tb.Fatal("redis-server is not running")
	}
	if err := r.cmd.Process.Signal(sig); err != nil {
		r.tb.Fatalf("cannot signal redis-server: %v", err)
	}
	r.paused = paused
}

// Do runs a raw command (for example "PUBSUB", "NUMSUB", "ch") and returns
// its reply, failing the test on error.
func (r *Redis) Do(tb testing.TB, args ...any) any {
	tb.Helper()
	v, err := r.DoErr(args...)
	if err != nil {
		tb.Fatalf("redis %v: %v", args, err)
	}
	return v
}

// DoErr runs a raw command and returns its reply or error. A nil reply is
// returned as nil with no error.
func (r *Redis) DoErr(args ...any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := r.client.Do(ctx, args...).Result()
	if err == redis.Nil {
		return nil, nil
	}
	return v, err
}

// Info returns one field of INFO (for example "used_memory"), or "" when
// absent.
func (r *Redis) Info(tb testing.TB, field string) string {
	tb.Helper()
	s, _ := r.Do(tb, "INFO", "all").(string)
	return InfoField(s, field)
}

// InfoField returns the value of field in INFO output s, or "".
func InfoField(s, field string) string {
	for line := range strings.SplitSeq(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && k == field {
			return v
		}
	}
	return ""
}

// waitPing waits until the server at addr answers PING.
func waitPing(addr string, timeout time.Duration) error {
	c := redis.NewClient(&redis.Options{
		Addr:            addr,
		Protocol:        2,
		DisableIdentity: true,
		MaxRetries:      -1,
		DialTimeout:     200 * time.Millisecond,
		ReadTimeout:     200 * time.Millisecond,
		PoolSize:        1,
	})
	defer c.Close()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FreePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("cannot find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// freeClusterPort returns a free port p whose cluster bus port p+10000 is
// free too.
func freeClusterPort(tb testing.TB) int {
	tb.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("cannot find a free port: %v", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		if p+10000 > 65535 {
			l.Close()
			continue
		}
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+10000)))
		l.Close()
		if err != nil {
			continue
		}
		l2.Close()
		return p
	}
	tb.Fatal("cannot find a free cluster port pair")
	return 0
}

// Cluster is a Redis Cluster owned by one test: masters only
// (StartCluster) or masters with replicas (StartClusterWithReplicas).
type Cluster struct {
	nodes []*Redis // immutable after StartCluster; masters first, then replicas
	// masters is how many nodes were created as masters; after a failover
	// the roles differ: ask Masters.
	masters int
}

// StartCluster starts a Redis Cluster of the given number of masters (at
// least 3) on free ports, waits until every node reports cluster_state:ok,
// and kills it in tb.Cleanup.
func StartCluster(tb testing.TB, masters int) *Cluster {
	tb.Helper()
	return startCluster(tb, masters, 0)
}

// StartClusterWithReplicas starts a Redis Cluster of masters (at least 3)
// each with replicas replicas, all real redis-server processes on free
// ports, and waits until every node reports cluster_state:ok and every
// replica's link to its master is up. A master killed with Stop is
// replaced by one of its replicas after the node timeout (2 s); see
// WaitFailover.
func StartClusterWithReplicas(tb testing.TB, masters, replicas int) *Cluster {
	tb.Helper()
	return startCluster(tb, masters, replicas)
}

func startCluster(tb testing.TB, masters, replicas int) *Cluster {
	tb.Helper()
	redisPath(tb, "redis-server")
	redisPath(tb, "redis-cli")
	if masters < 3 || replicas < 0 {
		tb.Fatalf("a redis cluster needs at least 3 masters, not %d (replicas %d)", masters, replicas)
	}
	c := &Cluster{masters: masters}
	for range masters * (1 + replicas) {
		dir := tb.TempDir()
		r := &Redis{
			tb:   tb,
			port: freeClusterPort(tb),
			dir:  dir,
			sock: filepath.Join(dir, "r.sock"),
			args: []string{
				"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
				"--cluster-node-timeout", "2000",
			},
		}
		r.client = redis.NewClient(&redis.Options{
			Addr: r.Addr(), Protocol: 2, DisableIdentity: true, MaxRetries: -1, PoolSize: 2,
		})
		tb.Cleanup(func() {
			r.kill()
			_ = r.client.Close()
		})
		if err := r.start(); err != nil {
			tb.Fatal(err)
		}
		c.nodes = append(c.nodes, r)
	}
	args := []string{"--cluster", "create"}
	for _, n := range c.nodes {
		args = append(args, n.Addr())
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	out, err := exec.Command("redis-cli", args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("cannot create redis cluster: %v\n%s", err, out)
	}
	Eventually(tb, 30*time.Second, func() bool {
		for _, n := range c.nodes {
			if !n.clusterSettled(len(c.nodes)) {
				return false
			}
		}
		return true
	}, "redis cluster did not reach cluster_state:ok with every replica in sync")
	return c
}

// clusterSettled reports whether r sees the cluster ok, knows want nodes as
// connected and, when a replica, has its replication link up.
func (r *Redis) clusterSettled(want int) bool {
	s, err := r.DoErr("CLUSTER", "INFO")
	if err != nil || InfoField(fmt.Sprint(s), "cluster_state") != "ok" {
		return false
	}
	// Every node must know every other node before clients route.
	nodes, err := r.DoErr("CLUSTER", "NODES")
	if err != nil || bytes.Count([]byte(fmt.Sprint(nodes)), []byte("connected")) < want {
		return false
	}
	info, err := r.DoErr("INFO", "replication")
	if err != nil {
		return false
	}
	return InfoField(fmt.Sprint(info), "role") == "master" || InfoField(fmt.Sprint(info), "master_link_status") == "up"
}

// Masters returns the running nodes that are masters now.
func (c *Cluster) Masters(tb testing.TB) []*Redis {
	tb.Helper()
	var out []*Redis
	for _, n := range c.nodes {
		if !n.running() {
			continue
		}
		if info, err := n.DoErr("INFO", "replication"); err == nil && InfoField(fmt.Sprint(info), "role") == "master" {
			out = append(out, n)
		}
	}
	return out
}

// WaitFailover waits until dead (a master stopped with Stop) has been
// replaced: as many running masters as the cluster was created with, and
// every running node reporting cluster_state:ok.
func (c *Cluster) WaitFailover(tb testing.TB, dead *Redis, timeout time.Duration) {
	tb.Helper()
	Eventually(tb, timeout, func() bool {
		if dead.running() || len(c.Masters(tb)) < c.masters {
			return false
		}
		for _, n := range c.nodes {
			if !n.running() {
				continue
			}
			s, err := n.DoErr("CLUSTER", "INFO")
			if err != nil || InfoField(fmt.Sprint(s), "cluster_state") != "ok" {
				return false
			}
		}
		return true
	}, "no replica took over from the stopped master")
}

// running reports whether r's process is running (not stopped).
func (r *Redis) running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cmd != nil
}

// Addrs returns the addresses (host:port) of the nodes created as masters,
// the seeds a client needs.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, c.masters)
	for i, n := range c.nodes[:c.masters] {
		addrs[i] = n.Addr()
	}
	return addrs
}

// Nodes returns the cluster's nodes, masters as created first, then
// replicas.
func (c *Cluster) Nodes() []*Redis { return c.nodes }

// KillPubSub closes every pub/sub client connection of the server (CLIENT
// KILL TYPE pubsub), as a network failure would, and returns how many.
func (r *Redis) KillPubSub(tb testing.TB) int64 {
	tb.Helper()
	n, _ := r.Do(tb, "CLIENT", "KILL", "TYPE", "pubsub").(int64)
	return n
}

// Keys returns the keys matching pattern (KEYS; for tests only).
func (r *Redis) Keys(tb testing.TB, pattern string) []string {
	tb.Helper()
	return toStrings(r.Do(tb, "KEYS", pattern))
}

// PubSubChannels returns the active pub/sub channels matching pattern,
// both classic (PUBSUB CHANNELS) and sharded (PUBSUB SHARDCHANNELS).
func (r *Redis) PubSubChannels(tb testing.TB, pattern string) []string {
	tb.Helper()
	return append(toStrings(r.Do(tb, "PUBSUB", "CHANNELS", pattern)),
		toStrings(r.Do(tb, "PUBSUB", "SHARDCHANNELS", pattern))...)
}

// NumSub returns the subscriber count of a pub/sub channel, classic plus
// sharded (PUBSUB NUMSUB and SHARDNUMSUB).
func (r *Redis) NumSub(tb testing.TB, channel string) int64 {
	tb.Helper()
	var n int64
	for _, sub := range []string{"NUMSUB", "SHARDNUMSUB"} {
		v, _ := r.Do(tb, "PUBSUB", sub, channel).([]any)
		if len(v) == 2 {
			c, _ := v[1].(int64)
			n += c
		}
	}
	return n
}

func toStrings(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, e := range list {
		out = append(out, fmt.Sprint(e))
	}
	return out
}
