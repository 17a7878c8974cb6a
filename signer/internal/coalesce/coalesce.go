// Package coalesce lets many goroutines send small items over one ordered
// channel, such as a gRPC stream, in as few messages as it takes. The
// goroutine that finds no send in progress sends everything queued and
// goes on until the queue is empty; the others only queue. Nothing waits
// for a timer: an item that finds the channel idle goes out at once, and
// items pile up into one message only while an earlier one is being sent.
package coalesce

import "sync"

// Sender queues items and sends them in batches. It is safe for
// concurrent use.
type Sender[T any] struct {
	send  func([]T) error
	limit int

	mu      sync.Mutex
	queue   []T
	sending bool
}

// New returns a Sender that sends with send, at most limit items at a time.
// send is never called concurrently, and must not keep the slice.
func New[T any](limit int, send func([]T) error) *Sender[T] {
	return &Sender[T]{send: send, limit: max(limit, 1)}
}

// Add queues v. When no other goroutine is sending, this one sends
// everything queued, v included, until the queue is empty, and returns
// the first error of those sends; otherwise the goroutine already
// sending sends v, and Add returns nil at once. Items of a failed send
// are dropped: the channel is broken and their owners must learn that
// from it.
func (s *Sender[T]) Add(v T) error {
	s.mu.Lock()
	s.queue = append(s.queue, v)
	if s.sending {
		s.mu.Unlock()
		return nil
	}
	s.sending = true
	var first error
	for len(s.queue) > 0 {
		batch := s.queue
		if len(batch) > s.limit {
			// The rest shares the array past batch's end only.
			batch, s.queue = batch[:s.limit:s.limit], batch[s.limit:]
		} else {
			s.queue = nil
		}
		s.mu.Unlock()
		if err := s.send(batch); err != nil && first == nil {
			first = err
		}
		s.mu.Lock()
	}
	s.sending = false
	s.mu.Unlock()
	return first
}
