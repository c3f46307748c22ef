// The portal's sign-in with a passkey: the button, and the browser's autofill on the email field
// (conditional mediation); on the second-factor page, the button. The options come from
// /login/passkey/begin; the passkey's answer is posted with the page's form to /login/passkey,
// which signs the browser in.
(function () {
  "use strict";
  var form = document.getElementById("passkey-form");
  var PKC = window.PublicKeyCredential;
  if (!form || !PKC || !PKC.parseRequestOptionsFromJSON || !navigator.credentials) return;
  var button = document.getElementById("passkey-button");
  var pending = null;

  function signIn(mediation) {
    if (pending) pending.abort();
    var ctl = new AbortController();
    pending = ctl;
    var body = new URLSearchParams({ csrf: form.elements.csrf.value });
    if (form.elements.mfa_token) body.set("mfa_token", form.elements.mfa_token.value);
    return fetch("/login/passkey/begin", { method: "POST", body: body, credentials: "same-origin" })
      .then(function (res) {
        if (!res.ok) throw new Error("the service answered " + res.status);
        return res.json();
      })
      .then(function (options) {
        return navigator.credentials.get({ publicKey: PKC.parseRequestOptionsFromJSON(options), mediation: mediation, signal: ctl.signal });
      })
      .then(function (credential) {
        if (!credential) return;
        form.elements.credential.value = JSON.stringify(credential.toJSON());
        form.submit();
      });
  }

  button.hidden = false;
  button.addEventListener("click", function () {
    signIn("optional").catch(function () {});
  });
  // Autofill only where a field asks for it: the sign-in page's email field.
  if (PKC.isConditionalMediationAvailable && document.querySelector("input[autocomplete~=webauthn]")) {
    PKC.isConditionalMediationAvailable().then(function (ok) {
      if (ok) signIn("conditional").catch(function () {});
    });
  }
})();
