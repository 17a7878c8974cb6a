package state

import "errors"

// Sentinel errors. Errors returned by this package wrap one of them where it
// applies; test with errors.Is.
var (
	// ErrNotFound reports that the requested record does not exist.
	ErrNotFound = errors.New("state: not found")

	// ErrExists reports that a record (or a unique label) already exists.
	ErrExists = errors.New("state: already exists")

	// ErrBound reports that a key is bound to another member than the one
	// a request or a certificate names; a binding never changes.
	ErrBound = errors.New("state: key bound to another member")

	// ErrAmbiguous reports that a hash prefix matches more than one record.
	ErrAmbiguous = errors.New("state: ambiguous prefix")

	// ErrInvalid reports invalid input: an empty id, bad hex, an unknown
	// usage or status, and so on. Nothing is written.
	ErrInvalid = errors.New("state: invalid input")

	// ErrLocked reports that another process holds the state file.
	ErrLocked = errors.New("state: state file in use by another signerd")

	// ErrSchemaVersion reports a state file written with a schema version
	// this build does not know (a newer signerd).
	ErrSchemaVersion = errors.New("state: unsupported schema version")

	// ErrCorrupt reports a state file or record that cannot be read: not a
	// bbolt file, not a signerd state file, or a record that does not decode.
	ErrCorrupt = errors.New("state: corrupt state file")

	// ErrPermissions reports a state file that is not a regular file or that
	// is accessible to group or others (it must be 0600).
	ErrPermissions = errors.New("state: unsafe state file permissions")

	// ErrWrite reports a transaction whose commit could not be written to
	// the state file (ENOSPC, EROFS, EIO, EFBIG...). The store goes on
	// without it and stays usable; the next transaction may succeed once
	// the file can be written again. Only when the failure was the sync
	// after the file was written (EIO from fdatasync) may the change still
	// reach the disk and show after a restart.
	ErrWrite = errors.New("state: the state file cannot be written")

	// ErrClosed reports use of a Store after Close.
	ErrClosed = errors.New("state: store closed")

	// ErrReadOnly reports a write attempted in a View transaction.
	ErrReadOnly = errors.New("state: read-only transaction")

	// ErrTxDone reports use of a Tx after its function returned.
	ErrTxDone = errors.New("state: transaction already finished")
)
