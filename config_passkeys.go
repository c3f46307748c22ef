package main

// config_passkeys.go is the passkeys' part of the settings: the relying party's ID and name, and
// the origins a ceremony may come from.

// passkeyConfig is WEBAUTHN_RP_ID, WEBAUTHN_RP_NAME and WEBAUTHN_ORIGINS. With no RP ID, passkeys
// are off and their endpoints answer 501.
type passkeyConfig struct {
	rpID    string // "" when passkeys are off
	rpName  string
	origins []string // scheme://host[:port], each the RP ID or under it
	// warnings are said at start: why passkeys are off, or which default origins were left out.
	warnings []string
}

func (p passkeyConfig) on() bool { return p.rpID != "" }
