// client.d.ts: the types of client.js, the auth service's browser module, served beside it at
// /auth/client.d.ts.

/** What createAuth takes; every option has a default. */
export interface AuthOptions {
  /** The service's origin, e.g. "https://auth.example.com"; "" (the default) when a proxy serves it on the page's own origin. */
  baseURL?: string;
  /** Where the tokens live: localStorage (the default, shared by the tabs of the origin), sessionStorage, or "memory" (this page only). Where localStorage is missing or unusable (Node, server-side rendering, a sandboxed frame), "memory". */
  storage?: Pick<Storage, "getItem" | "setItem"> | "memory";
  /** The storage entry's name, which also names the Web Locks; default "auth". */
  key?: string;
  /** Deprecated: use onChange's "signed_out" event. Called with the reason, once in every tab, when the session ends. */
  onSignOut?: (reason: string) => void;
  /** Seconds before the access token expires to refresh it; 0 (the default): only on a 401. */
  refreshAhead?: number;
  /** Seconds to retry a refresh or sign-out that the service could not answer (5xx, network error); default 10. */
  retryFor?: number;
  /** Seconds after which a request to the service counts as unanswered; default 10. */
  timeout?: number;
  /** Other origins that auth.fetch sends the access token to, e.g. ["https://api.example.com"]. */
  apiOrigins?: string[];
  /** Seconds that a token from getAccessToken is good for at least; default 5. */
  fresh?: number;
}

/** Who is signed in, as the access token says. */
export interface Session {
  userId: string;
  email: string;
  expiresAt: Date;
}

/** The ways to complete a sign-in that answered "mfa_required". */
export type SecondFactorMethod = "totp" | "passkey" | "recovery_code" | (string & {});

/**
 * The service's answer to signIn or verifySecondFactor, with what became of it:
 * "signed_in" (tokens stored, every tab signed in), "mfa_required" (call verifySecondFactor with
 * one of methods), or "refused" (401 invalid_credentials, 429 too_many_attempts with Retry-After, ...).
 */
export type SignInResult = Response & {
  state: "signed_in" | "mfa_required" | "refused";
  /** With "mfa_required": the methods the service takes. */
  methods?: SecondFactorMethod[];
};

/** A second factor: a code from the authenticator app, or one of the recovery codes. */
export type SecondFactor = { code: string; recovery_code?: never } | { recovery_code: string; code?: never };

/**
 * A change of the session, told to onChange listeners in every tab of the origin:
 * "signed_in" (a sign-in, with or without a second factor), "refreshed" (new tokens for the same
 * session), "stepped_up" (the session proved a second factor), "signed_out" (with the reason:
 * "signed_out" for signOut, else the service's code, e.g. "token_reused", "session_expired").
 */
export type AuthEvent =
  | { type: "signed_in" | "refreshed" | "stepped_up"; session: Session }
  | { type: "signed_out"; reason: string; session: null };

/** Passkeys (WebAuthn): each runs the browser's ceremony (navigator.credentials) on the service's options. */
export interface Passkeys {
  /** Adds a passkey to the signed-in account, after its password; resolves to the service's answer (201 {passkey, recovery_codes?}, 401 invalid_credentials, ...). Signed out, a 401 token_missing. Rejects when the browser's ceremony fails or is cancelled. */
  register(options: { password: string; name?: string }): Promise<Response>;
  /** Signs in with a passkey alone: discoverable, or with the account's email; mediation "conditional" lets the browser's autofill offer passkeys. Rejects when the browser's ceremony fails or is cancelled. */
  signIn(options?: { email?: string; mediation?: CredentialMediationRequirement }): Promise<SignInResult>;
  /** Completes a signIn that answered "mfa_required" with "passkey" among its methods. Rejects when no sign-in waits. */
  verifySecondFactor(): Promise<SignInResult>;
  /** Raises the session with a passkey after a call answered 401 mfa_required (acr_values "phr" or "aal2"); send the call again once this resolves to 200. */
  stepUp(): Promise<Response>;
}

export interface Auth {
  /** Creates an account; resolves to the service's answer (201, 409 email_taken, 400 weak_password, ...). */
  signUp(email: string, password: string): Promise<Response>;
  /** Ends the session signed in now (at the service too), then logs in. */
  signIn(email: string, password: string): Promise<SignInResult>;
  /** Completes a signIn that answered "mfa_required"; a wrong code is "refused" and may be tried again. Rejects when no sign-in waits. */
  verifySecondFactor(factor: SecondFactor): Promise<SignInResult>;
  /** Raises the session to a second factor after a call answered 401 mfa_required; send the call again once this resolves to 200. Signed out, it resolves to a 401 token_missing. */
  stepUp(factor: string | SecondFactor): Promise<Response>;
  /** Passkeys: add one, sign in with one, complete a second factor or step up with one. */
  passkeys: Passkeys;
  /** Whether a call was refused for want of a second factor (401 with WWW-Authenticate error="insufficient_user_authentication"), so that stepUp and sending it again may pass. */
  needsStepUp(res: Response): boolean;
  /** Ends the session in every tab and at the service; null when none was signed in. */
  signOut(): Promise<Response | null>;
  /** fetch with the access token for the allowed origins, refreshing it once on a 401 about the token and sending the request again. */
  fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
  /** An access token good for at least `fresh` seconds, for WebSockets, EventSource or other SDKs; null when signed out. Rejects when the service could not refresh it. */
  getAccessToken(): Promise<string | null>;
  /** Calls listener on every change of the session, in every tab; returns the unsubscribe. */
  onChange(listener: (event: AuthEvent) => void): () => void;
  /** Who is signed in, or null. */
  session(): Session | null;
}

/** Throws a TypeError naming the option when one is of the wrong type or out of range (seconds are finite numbers, 0 or more; timeout more than 0). */
export function createAuth(options?: AuthOptions): Auth;
