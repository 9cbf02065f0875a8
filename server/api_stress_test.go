package server

import (
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"tether/internal/proto"
	"tether/internal/wsframe"
)

// TestStressClusterAPI runs the API's user commands (subscribe,
// unsubscribe, disconnect) while the users' clients subscribe, unsubscribe
// and reconnect at random, then checks that the channel index, the gauges
// and the per-user connection counts return to zero. Under -race it checks
// the locking of commands that act on connections from the control plane's
// goroutines.
func TestStressClusterAPI(t *testing.T) {
	ts := startServer(t, Config{JWTSecret: testSecret, APIKey: testAPIKey, ClientMsgRate: -1, AcceptRate: -1,
		MaxConnsPerUser: 100, MaxSubsPerConn: -1})
	const (
		users    = 4
		clients  = 12
		channels = 5
		rounds   = 40
		calls    = 60
	)
	user := func(i int) string { return "u" + strconv.Itoa(i%users) }
	channel := func(i int) string { return "s." + strconv.Itoa(i%channels) }
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			for range rounds / 4 {
				token := makeJWT(testSecret, "HS256", map[string]any{"sub": user(i), "exp": time.Now().Add(time.Hour).Unix(), "channels": []string{"*"}})
				c, _, err := dialWS(ts.addr, "/ws?token="+token, nil)
				if err != nil {
					t.Error(err)
					return
				}
				for range 4 {
					op := "subscribe"
					if rng.IntN(3) == 0 {
						op = "unsubscribe"
					}
					b := `{"op":"` + op + `","channel":"` + channel(rng.IntN(channels)) + `"}`
					if c.writeFrame(wsframe.OpText, []byte(b)) != nil {
						break // disconnected by the API
					}
				}
				// Stay a while, reading what the server sends, so that the
				// API's commands find connections to act on.
				for {
					if _, _, err := c.next(30 * time.Millisecond); err != nil {
						break
					}
				}
				c.conn.Close()
			}
		})
	}
	for i := range 3 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 2))
			for range calls {
				u, ch := user(rng.IntN(users)), channel(rng.IntN(channels))
				switch rng.IntN(3) {
				case 0:
					apiDo(t, "POST", ts.addr, "/api/subscribe", testAPIKey, `{"user":"`+u+`","channel":"`+ch+`"}`)
				case 1:
					apiDo(t, "POST", ts.addr, "/api/unsubscribe", testAPIKey, `{"user":"`+u+`","channel":"`+ch+`"}`)
				default:
					apiDo(t, "POST", ts.addr, "/api/disconnect", testAPIKey, `{"user":"`+u+`","code":4100}`)
				}
			}
		})
	}
	wg.Wait()
	eventually(t, 10*time.Second, func() bool {
		return ts.m.conns.Load() == 0 && ts.m.subscriptions.Load() == 0 && ts.m.channels.Load() == 0
	}, "connections, subscriptions and channels back to 0")
	ts.userConns.mu.Lock()
	left := len(ts.userConns.n)
	ts.userConns.mu.Unlock()
	if left != 0 {
		t.Fatalf("per-user counts left for %d users", left)
	}
	if n := ts.metric(t, `tether_disconnects_total{reason="api"}`); n == 0 {
		t.Errorf("no connection was disconnected by the API")
	}
	for _, cmd := range []string{"subscribe", "unsubscribe", "disconnect"} {
		ok := ts.metric(t, `tether_api_commands_total{command="`+cmd+`",outcome="ok"}`)
		nf := ts.metric(t, `tether_api_commands_total{command="`+cmd+`",outcome="`+proto.CodeNotFound+`"}`)
		t.Logf("%s: %v ok, %v not found", cmd, ok, nf)
	}
}
