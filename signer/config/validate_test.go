package config

import (
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

// TestEverySectionChecked: every top-level table of the schema is a
// section that checks itself and is listed in fileConfig.sections, so that
// a new table cannot be decoded without being validated.
func TestEverySectionChecked(t *testing.T) {
	var fc fileConfig
	listed := map[any]bool{}
	for _, s := range fc.sections() {
		listed[s] = true
	}
	v := reflect.ValueOf(&fc).Elem()
	for i := range v.NumField() {
		f := v.Type().Field(i)
		p := v.Field(i).Addr().Interface()
		if _, ok := p.(section); !ok {
			t.Errorf("fileConfig.%s (%s) has no check(*checker, *Config) method", f.Name, f.Type)
			continue
		}
		if !listed[p] {
			t.Errorf("fileConfig.%s is not in fileConfig.sections()", f.Name)
		}
	}
	if len(listed) != v.NumField() {
		t.Errorf("sections() lists %d sections, fileConfig has %d fields", len(listed), v.NumField())
	}
}

// TestNoCgo checks that the package, and with it the token-selector parser
// it shares with the hsm package (hsm/pkcs11uri), depends on no package
// with cgo files, so that it builds with CGO_ENABLED=0.
func TestNoCgo(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go tool to list dependencies with: %v", err)
	}
	out, err := exec.CommandContext(t.Context(), goTool, "list", "-deps", "-f", "{{if .CgoFiles}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	if deps := strings.TrimSpace(string(out)); deps != "" {
		t.Fatalf("depends on packages with cgo files:\n%s", deps)
	}
}
