package coalesce

import (
	"errors"
	"sync"
	"testing"
)

func TestLoneItemGoesOutAlone(t *testing.T) {
	var sent [][]int
	s := New(8, func(b []int) error {
		sent = append(sent, append([]int(nil), b...))
		return nil
	})
	for i := range 3 {
		if err := s.Add(i); err != nil {
			t.Fatal(err)
		}
	}
	if len(sent) != 3 {
		t.Fatalf("sends %v: want each item sent at once, alone", sent)
	}
}

func TestItemsQueuedDuringASendGoTogether(t *testing.T) {
	var (
		mu      sync.Mutex
		batches [][]int
	)
	entered := make(chan struct{})
	release := make(chan struct{})
	s := New(4, func(b []int) error {
		mu.Lock()
		batches = append(batches, append([]int(nil), b...))
		first := len(batches) == 1
		mu.Unlock()
		if first {
			close(entered)
			<-release
		}
		return nil
	})
	done := make(chan error)
	go func() { done <- s.Add(0) }()
	<-entered
	// While item 0 is being sent, six more queue; the sender sends them
	// in batches of at most four, in order.
	for i := 1; i <= 6; i++ {
		if err := s.Add(i); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := [][]int{{0}, {1, 2, 3, 4}, {5, 6}}
	if len(batches) != len(want) {
		t.Fatalf("batches %v, want %v", batches, want)
	}
	for i := range want {
		if len(batches[i]) != len(want[i]) {
			t.Fatalf("batches %v, want %v", batches, want)
		}
		for j := range want[i] {
			if batches[i][j] != want[i][j] {
				t.Fatalf("batches %v, want %v", batches, want)
			}
		}
	}
}

func TestEveryItemIsSentOnceUnderContention(t *testing.T) {
	const goroutines, each = 16, 500
	seen := make([]int, goroutines*each)
	calls := 0
	s := New(32, func(b []int) error {
		calls++ // send is never called concurrently: -race checks it
		for _, v := range b {
			seen[v]++
		}
		return nil
	})
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				if err := s.Add(g*each + i); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	for v, n := range seen {
		if n != 1 {
			t.Fatalf("item %d sent %d times", v, n)
		}
	}
	if calls == 0 || calls > goroutines*each {
		t.Fatalf("%d sends for %d items", calls, goroutines*each)
	}
}

func TestSendErrorReachesTheSender(t *testing.T) {
	broken := errors.New("stream broken")
	s := New(8, func([]string) error { return broken })
	if err := s.Add("x"); !errors.Is(err, broken) {
		t.Fatalf("Add: %v, want the send's error", err)
	}
}
