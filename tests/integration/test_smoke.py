from tests.support.helpers import Api


async def test_signup_login_buy_and_me(api: Api) -> None:
    fam = await api.family()
    r = await api.buy(fam, 500)
    assert r.status == 201, r.body
    assert r.body["purchase"]["total_cents"] == 650
    assert r.body["purchase"]["fee_cents"] == 150
    assert r.body["purchase"]["card_brand"] == "visa"
    assert r.body["purchase"]["card_last4"] == "4242"
    assert r.body["balance"] == 500
    me = await api.call("GET", "/me", fam)
    assert me.status == 200 and me.body["balance"] == 500
