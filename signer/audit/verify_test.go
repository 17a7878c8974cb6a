package audit

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
)

func TestVerifyFileFindsTampering(t *testing.T) {
	for _, tt := range tampers {
		t.Run(tt.name, func(t *testing.T) {
			path := applyTamper(t, tt)
			_, err := VerifyFile(path)
			checkVerifyError(t, err, tt)
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestVerifyIntactLog(t *testing.T) {
	path := writeLog(t, 10)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	sum, err := Verify(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	want := Summary{Lines: 10, LastSeq: 10, LastHash: lineHash(lines[9])}
	if sum != want {
		t.Fatalf("summary %+v, want %+v", sum, want)
	}
	fsum, err := VerifyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if fsum.Head == nil || *fsum.Head != (Head{Seq: 10, Hash: want.LastHash}) {
		t.Fatalf("VerifyFile head %+v", fsum.Head)
	}
	if sum, err := Verify(bytes.NewReader(nil)); err != nil || sum != (Summary{LastHash: ZeroHash}) {
		t.Fatalf("empty log: %+v, %v", sum, err)
	}
}

// TestVerifyAloneCannotSeeACut documents why the head file exists: the
// first lines of a log verify on their own.
func TestVerifyAloneCannotSeeACut(t *testing.T) {
	path := writeLog(t, 10)
	lines := readLines(t, path)
	sum, err := Verify(bytes.NewReader(joinLines(lines[:8])))
	if err != nil || sum.Lines != 8 {
		t.Fatalf("first 8 lines: %+v, %v", sum, err)
	}
	if err := os.WriteFile(path, joinLines(lines[:8]), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyFile(path); !errors.Is(err, ErrTampered) {
		t.Fatalf("VerifyFile with the head file: %v", err)
	}
	// Without its head file (a copy, say), the cut cannot be seen and
	// Summary.Head says so.
	if err := os.Remove(path + headSuffix); err != nil {
		t.Fatal(err)
	}
	if sum, err := VerifyFile(path); err != nil || sum.Head != nil || sum.Lines != 8 {
		t.Fatalf("VerifyFile without head file: %+v, %v", sum, err)
	}
}

func TestVerifyFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := VerifyFile(dir + "/none.log"); err == nil || errors.Is(err, ErrTampered) {
		t.Fatalf("missing file: %v", err)
	}
	path := writeLog(t, 2)
	if err := os.WriteFile(path+headSuffix, []byte(`{"seq":0,"hash":"`+strings.Repeat("a", 64)+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyFile(path); !errors.Is(err, ErrTampered) {
		t.Fatalf("inconsistent head file: %v", err)
	}
}

// errReader fails after its data.
type errReader struct{ data []byte }

var errRead = errors.New("read failed")

func (r *errReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, errRead
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestVerifyReadError(t *testing.T) {
	path := writeLog(t, 3)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := Verify(&errReader{data: data})
	if !errors.Is(err, errRead) || errors.Is(err, ErrTampered) {
		t.Fatalf("read error: %v", err)
	}
	if sum.Lines != 3 {
		t.Fatalf("summary before the error: %+v", sum)
	}
}
