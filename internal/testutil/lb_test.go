package testutil

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const haproxyTemplate = `
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend f
    bind 127.0.0.1:{{.Port}}
    default_backend b
backend b
{{- range $i, $b := .Backends}}
    server n{{$i}} {{$b.Addr}}
{{- end}}
`

const nginxTemplate = `
events { worker_connections 64; }
http {
    client_body_temp_path {{.Dir}}/body;
    proxy_temp_path {{.Dir}}/proxy;
    access_log off;
    upstream b {
{{- range .Backends}}
        server {{.Addr}};
{{- end}}
    }
    server {
        listen 127.0.0.1:{{.Port}};
        location / { proxy_pass http://b; }
    }
}
`

func TestLoadBalancers(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello "+r.URL.Path)
	}))
	defer backend.Close()
	addr := strings.TrimPrefix(backend.URL, "http://")
	f := func(name string, start func(testing.TB, string, ...LBBackend) *LB, tmpl string) {
		t.Run(name, func(t *testing.T) {
			lb := start(t, tmpl, LBBackend{Addr: addr})
			resp, err := http.Get("http://" + lb.Addr() + "/x")
			if err != nil {
				t.Fatalf("%v\n%s", err, lb.Output())
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "hello /x" {
				t.Fatalf("%d %q\n%s", resp.StatusCode, body, lb.Output())
			}
			lb.Stop()
			if _, err := http.Get("http://" + lb.Addr() + "/x"); err == nil {
				t.Fatal("the load balancer still answers after Stop")
			}
			lb.Stop()
		})
	}
	f("haproxy", StartHAProxy, haproxyTemplate)
	f("nginx", StartNginx, nginxTemplate)
}
