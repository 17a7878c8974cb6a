package softhsmtest

// TokenInfo exposes one parsed slot of softhsm2-util --show-slots to tests.
type TokenInfo struct {
	SlotID      string
	Label       string
	Serial      string
	Initialized bool
}

// ParseShowSlots exposes parseShowSlots to tests.
func ParseShowSlots(out string) []TokenInfo {
	var infos []TokenInfo
	for _, i := range parseShowSlots(out) {
		infos = append(infos, TokenInfo{SlotID: i.slotID, Label: i.label, Serial: i.serial, Initialized: i.initialized})
	}
	return infos
}
