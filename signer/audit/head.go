package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// headSuffix names the head file of a log: path + headSuffix.
const headSuffix = ".head"

// tmpSuffix names the temporary file a new head is written to before it
// is renamed over the head file.
const tmpSuffix = ".tmp"

// maxHeadSize bounds what readHead reads.
const maxHeadSize = 4096

// readHead reads and checks a head file. A missing file gives nil, nil; an
// unreadable or malformed one an error wrapping ErrTampered.
func readHead(path string) (*Head, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: head file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxHeadSize+1))
	if err != nil {
		return nil, fmt.Errorf("audit: head file %s: %w", path, err)
	}
	var h Head
	switch {
	case len(data) > maxHeadSize:
		err = errors.New("too large")
	case json.Unmarshal(data, &h) != nil:
		err = errors.New("not JSON {seq, hash}")
	case !isHash(h.Hash):
		err = fmt.Errorf("hash %q is not 64 lower-case hex digits", h.Hash)
	case h.Seq == 0 && h.Hash != ZeroHash:
		err = errors.New("seq 0 with a hash other than zeros")
	}
	if err != nil {
		return nil, fmt.Errorf("%w: head file %s: %v", ErrTampered, path, err)
	}
	return &h, nil
}

// writeHead replaces the head file at path with h: it writes path+".tmp",
// fsyncs it and renames it over path, so that the head file is always
// either the old head or the new one. The rename is not followed by a
// directory fsync: after a crash the head may be the previous one, which
// only lags the log.
func writeHead(path string, h Head) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	data = append(data, '\n')
	tmp := path + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("audit: head file: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("audit: head file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("audit: head file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("audit: head file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("audit: head file: %w", err)
	}
	return nil
}

// syncDir fsyncs a directory, making the names created in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
