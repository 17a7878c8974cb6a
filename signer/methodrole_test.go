package signer

import (
	"testing"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// TestEveryMethodHasARole walks the generated service description: an
// rpc added to signer.v1.Signer without a role in methodRole fails here
// (and would be refused to every caller).
func TestEveryMethodHasARole(t *testing.T) {
	var names []string
	for _, m := range signerv1.Signer_ServiceDesc.Methods {
		names = append(names, m.MethodName)
	}
	for _, st := range signerv1.Signer_ServiceDesc.Streams {
		names = append(names, st.StreamName)
	}
	if len(names) == 0 {
		t.Fatal("the service description lists no rpc")
	}
	for _, name := range names {
		full := "/" + signerv1.Signer_ServiceDesc.ServiceName + "/" + name
		if methodRole(full) == roleNobody {
			t.Errorf("rpc %s has no role in methodRole: every caller would be refused", full)
		}
	}
}

// TestMethodRoleAdmits checks who may call what, as the role table and
// the caller's admin and client flags decide.
func TestMethodRoleAdmits(t *testing.T) {
	admin := caller{admin: true}
	client := caller{client: true}
	nobody := caller{}
	tests := []struct {
		method                string
		admin, client, nobody bool
	}{
		{signerv1.Signer_GetStatus_FullMethodName, true, true, false},
		{signerv1.Signer_GetKey_FullMethodName, true, true, false},
		{signerv1.Signer_GenerateKey_FullMethodName, true, false, false},
		{signerv1.Signer_RefreshOCSP_FullMethodName, true, false, false},
		{signerv1.Signer_Sign_FullMethodName, false, true, false},
		{signerv1.Signer_SignStream_FullMethodName, false, true, false},
		{signerv1.Signer_SetOCSPResponses_FullMethodName, false, true, false},
		{"/signer.v1.Signer/NoSuchMethod", false, false, false},
		{"/other.v1.Signer/Sign", false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			if got := admin.mayCall(tt.method); got != tt.admin {
				t.Errorf("admin: mayCall = %v, want %v", got, tt.admin)
			}
			if got := client.mayCall(tt.method); got != tt.client {
				t.Errorf("client: mayCall = %v, want %v", got, tt.client)
			}
			if got := nobody.mayCall(tt.method); got != tt.nobody {
				t.Errorf("nobody: mayCall = %v, want %v", got, tt.nobody)
			}
		})
	}
}
