// The portal's sign-in with a passkey: the button, and the browser's autofill on the email field
// (conditional mediation); on the second-factor page, the button. The options come from
// /login/passkey/begin; the passkey's answer is posted with the page's form to /login/passkey,
// which signs the browser in.
// On the account page it adds a passkey: the options come from /account/passkeys/begin (after the
// password), and the new credential is posted with the form to /account/passkeys.
(function () {
  "use strict";
  var PKC0 = window.PublicKeyCredential;
  var add = document.getElementById("passkey-add-form");
  if (add && PKC0 && PKC0.parseCreationOptionsFromJSON && navigator.credentials) {
    var addButton = document.getElementById("passkey-add-button");
    var status = document.getElementById("passkey-status");
    addButton.hidden = false;
    addButton.addEventListener("click", function () {
      status.textContent = "";
      var body = new URLSearchParams({ csrf: add.elements.csrf.value, password: add.elements.password.value });
      fetch("/account/passkeys/begin", { method: "POST", body: body, credentials: "same-origin" })
        .then(function (res) {
          return res.json().then(function (j) {
            if (!res.ok) throw new Error(j.message || "the service answered " + res.status);
            return j;
          });
        })
        .then(function (options) {
          return navigator.credentials.create({ publicKey: PKC0.parseCreationOptionsFromJSON(options) });
        })
        .then(function (credential) {
          if (!credential) return;
          add.elements.credential.value = JSON.stringify(credential.toJSON());
          add.elements.password.value = "";
          add.submit();
        })
        .catch(function (err) {
          status.textContent = "No passkey was added: " + err.message;
        });
    });
  }
})();

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
    if (form.elements.step_up) body.set("step_up", "1");
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
