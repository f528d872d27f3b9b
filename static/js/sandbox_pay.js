// The sandbox processor's payment page (/sandbox-pay/#<session>): shows what Kinwire asked to be
// paid, takes the card, and on success returns the browser to Kinwire with the signed
// confirmation. Talks only to the processor's own endpoints; shares no code with Kinwire's apps,
// as a real processor's page would not.
const $ = (id) => document.getElementById(id);
const session = location.hash.slice(1);
history.replaceState(null, "", location.pathname); // the session stays in memory only

async function post(path, body) {
  const r = await fetch(`/sandbox-pay/${path}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error?.message || `The payment failed (${r.status}).`);
  return data;
}

const dollars = (cents) => `$${(cents / 100).toFixed(2)}`;

async function start() {
  try {
    const s = await post("session", { session });
    $("processor-name").textContent = s.processor;
    $("order").textContent = `${dollars(s.amount_cents)} for ${s.description}, to Kinwire.`;
    $("pay").textContent = `Pay ${dollars(s.amount_cents)}`;
    $("pay-form").hidden = false;
    $("card-number").focus();
  } catch (err) {
    $("order").textContent = session ? err.message : "There is nothing to pay here.";
  }
}

$("pay-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const button = $("pay");
  button.disabled = true;
  $("pay-notice").textContent = "";
  try {
    const paid = await post("pay", {
      session,
      card: {
        number: $("card-number").value.trim(),
        exp_month: Number($("card-month").value), exp_year: Number($("card-year").value),
        cvc: $("card-cvc").value.trim(), name: $("card-name").value.trim(),
      },
    });
    if (window.opener && !window.opener.closed) {
      // Opened by Kinwire's call page: the confirmation goes back to it, and this window closes
      // (the call's page never navigates).
      window.opener.postMessage({ type: "kinwire.checkout", checkout: paid.checkout_id,
                                  confirmation: paid.confirmation }, location.origin);
      window.close();
    } else {
      location.assign(paid.return_url);
    }
  } catch (err) {
    $("pay-notice").textContent = err.message;
    button.disabled = false;
  }
});

start();
