package proto

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"tether/internal/wsframe"
)

func TestCloseTable(t *testing.T) {
	seen := map[int]bool{}
	names := map[string]bool{}
	for _, c := range Closes() {
		if seen[c.Code] || names[c.Name] {
			t.Errorf("close code %d (%s) listed twice", c.Code, c.Name)
		}
		seen[c.Code], names[c.Name] = true, true
		switch c.Sender {
		case SentByServer, SentByClient, SentByBoth, SentByNone:
		default:
			t.Errorf("close code %d: unknown sender %q", c.Code, c.Sender)
		}
		if onWire := c.Sender != SentByNone; onWire != wsframe.ValidCloseCode(c.Code) {
			t.Errorf("close code %d: sent on the wire = %v, valid on the wire = %v", c.Code, onWire, !onWire)
		}
		if c.Name == "" || c.Meaning == "" {
			t.Errorf("close code %d lacks a name or a meaning", c.Code)
		}
		if got, ok := LookupClose(c.Code); !ok || got != c {
			t.Errorf("LookupClose(%d) = %v, %v", c.Code, got, ok)
		}
	}
	if _, ok := LookupClose(4999); ok {
		t.Error("LookupClose(4999) found a code tether does not use")
	}
}

// TestCloseTableMatchesDocs checks that docs/protocol.md's "Close codes"
// table has the rows of Closes: the same codes, names, senders and meanings.
func TestCloseTableMatchesDocs(t *testing.T) {
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	section := regexp.MustCompile(`(?s)### Close codes\n(.*?)\n#`).FindSubmatch(doc)
	if section == nil {
		t.Fatal(`docs/protocol.md has no "### Close codes" section`)
	}
	documented := map[int]CloseInfo{}
	for _, m := range regexp.MustCompile(`(?m)^\| (\d{4}) \| (.*?) \| (.*?) \| (.*?) \|`).FindAllSubmatch(section[1], -1) {
		code, _ := strconv.Atoi(string(m[1]))
		meaning := strings.ReplaceAll(string(m[4]), "`", "")
		documented[code] = CloseInfo{code, string(m[2]), meaning, string(m[3])}
	}
	for _, c := range Closes() {
		if d, ok := documented[c.Code]; !ok {
			t.Errorf("docs/protocol.md does not list close code %d (%s)", c.Code, c.Name)
		} else if d != c {
			t.Errorf("close code %d:\ndocs/protocol.md says %+v\ninternal/proto says  %+v", c.Code, d, c)
		}
		delete(documented, c.Code)
	}
	for code := range documented {
		t.Errorf("docs/protocol.md lists close code %d, which internal/proto does not know", code)
	}
}
