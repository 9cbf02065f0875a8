package server

import (
	"encoding/json"
	"testing"

	"tether/internal/proto"
)

// FuzzDecodePublishRequest feeds arbitrary bodies to the API's publish
// decoder: no panic; an accepted body yields 1 to maxBatch publications,
// each on a valid channel with data that is valid JSON within the bound;
// a refused one has a status and code.
func FuzzDecodePublishRequest(f *testing.F) {
	for _, s := range []string{
		`{"channel":"a","data":{"x":1}}`,
		`{"messages":[{"channel":"a","data":1},{"channel":"b.c","data":"s"}]}`,
		`{"messages":[]}`,
		`{"channel":"a","data":1,"messages":[{"channel":"a","data":1}]}`,
		`{"channel":"bad channel","data":1}`,
		`{"channel":"a"}`,
		`[1,2]`,
		`{"channel":"a","data":  [1, 2,  3] }`,
	} {
		f.Add([]byte(s))
	}
	const maxMessage = 256
	f.Fuzz(func(t *testing.T, body []byte) {
		pubs, _, aerr := decodePublishRequest(body, maxMessage)
		if aerr != nil {
			if aerr.status < 400 || aerr.code == "" {
				t.Fatalf("refusal without status or code: %+v", aerr)
			}
			return
		}
		if len(pubs) == 0 || len(pubs) > maxBatch {
			t.Fatalf("%d publications accepted", len(pubs))
		}
		for _, p := range pubs {
			if proto.CheckChannel(p.Channel) != nil || !json.Valid(p.Data) || len(p.Data) > maxMessage {
				t.Fatalf("accepted %q with data %q", p.Channel, p.Data)
			}
		}
	})
}
