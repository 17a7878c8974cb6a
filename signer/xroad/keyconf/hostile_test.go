package keyconf

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestParseHostile: a keyconf.xml written to hurt the importer is refused
// (ErrMalformed or ErrTooLarge) quickly and without expanding anything:
// entity expansion ("billion laughs"), an external entity naming a local
// file, nesting deeper than encoding/xml's bound, an attribute and a text
// of megabytes, and a file beyond MaxSize.
func TestParseHostile(t *testing.T) {
	open := `<keyConf xmlns="` + Namespace + `">`
	laughs := `<?xml version="1.0"?><!DOCTYPE keyConf [<!ENTITY a "aaaaaaaaaa">` +
		`<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">` +
		`<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;"><!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">]>` +
		open + `<device><deviceType>&e;</deviceType></device></keyConf>`
	external := `<?xml version="1.0"?><!DOCTYPE keyConf [<!ENTITY x SYSTEM "file:///etc/passwd">]>` +
		open + `<device><deviceType>&x;</deviceType></device></keyConf>`
	deep := open + strings.Repeat("<device>", 200000) + strings.Repeat("</device>", 200000) + `</keyConf>`
	attr := open + `<device id="` + strings.Repeat("A", 7<<20) + `"><deviceType>x</deviceType></device></keyConf>`
	cases := []struct {
		name string
		doc  string
		want error
	}{
		{"entity expansion", laughs, ErrMalformed},
		{"external entity", external, ErrMalformed},
		{"deep nesting", deep, ErrMalformed},
		{"huge unknown attribute", attr, nil},
		{"beyond MaxSize", open + strings.Repeat(" ", MaxSize) + `</keyConf>`, ErrTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			conf, err := ParseBytes([]byte(c.doc))
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v", d)
			}
			if c.want == nil {
				// Unknown attributes are ignored; the device is read
				// and nothing of the attribute is kept.
				if err != nil || len(conf.Devices) != 1 || conf.Devices[0].ID != "" {
					t.Fatalf("got %+v, %v", conf, err)
				}
				return
			}
			if !errors.Is(err, c.want) || conf != nil {
				t.Fatalf("got %v, %v; want %v", conf, err, c.want)
			}
			if strings.Contains(err.Error(), "aaaaaaaaaaaaaaaaaaaa") || strings.Contains(err.Error(), "root:") {
				t.Fatalf("the error holds expanded or read content: %.200s", err)
			}
		})
	}
}
