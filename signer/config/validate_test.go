package config

import (
	"reflect"
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
