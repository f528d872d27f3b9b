"""The demo data (`kinwire seed-demo`, or KINWIRE_DEMO=1 at start): one facility with two
people, a staff member, an admin, a kiosk and a family member connected to one person with
credits bought through the sandbox. Seeding twice changes nothing."""

from __future__ import annotations

from dataclasses import dataclass

from billing.gateway import Card
from billing.pricing import quote_purchase
from billing.purchases import buy_credits
from server import accounts, audit, facilities
from server.context import Context
from server.schema import connections
from store.ids import new_id

FAMILY = ("family@demo.kinwire.test", "family-demo-pass", "Dana Rivera")
STAFF = ("officer@demo.kinwire.test", "staff-demo-pass", "Officer Lee")
ADMIN = ("admin@demo.kinwire.test", "admin-demo-pass", "Demo Admin")
PEOPLE = (("Marcus Rivera", "A1001", "1234"), ("Joan Smith", "A1002", "2468"))
KIOSK_TOKEN = "demo-kiosk-token-not-for-production"  # noqa: S105 (demo only, printed)


@dataclass(frozen=True)
class Demo:
    facility_id: str
    created: bool


async def seed_demo(ctx: Context) -> Demo:
    now = ctx.clock()
    async with ctx.store.write() as conn:
        existing = await accounts.by_email(conn, FAMILY[0])
        if existing is not None:
            staff = await accounts.by_email(conn, STAFF[0])
            return Demo(staff.facility_id, False)
        facility = await facilities.create(conn, name="Riverside Correctional Facility",
                                           timezone="America/Chicago", settings={}, now=now)
        pw = ctx.passwords
        admin = await accounts.create(conn, role="admin", name=ADMIN[2], email=ADMIN[0],
                                      password_hash=await pw.hash(ADMIN[1]), now=now)
        await accounts.create(conn, role="staff", name=STAFF[2], email=STAFF[0],
                              password_hash=await pw.hash(STAFF[1]),
                              facility_id=facility.id, now=now)
        people = [await accounts.create(conn, role="person", name=name, inmate_number=number,
                                        pin_hash=await pw.hash(pin), facility_id=facility.id,
                                        now=now) for name, number, pin in PEOPLE]
        await accounts.register_device(conn, facility_id=facility.id, label="Demo kiosk",
                                       now=now, token=KIOSK_TOKEN)
        family = await accounts.create(conn, role="family", name=FAMILY[2], email=FAMILY[0],
                                       password_hash=await pw.hash(FAMILY[1]), now=now)
        await conn.execute(connections.insert().values(
            id=new_id("con"), facility_id=facility.id, family_id=family.id,
            person_id=people[0].id, status="approved", privileged=False,
            created_at=now, updated_at=now))
        s = ctx.settings
        quote = quote_purchase(1000, block=s.credit_block, fee_cents=s.purchase_fee_cents,
                               credits_max=max(1000, s.purchase_credits_max))
        await buy_credits(conn, ctx.gateway, account_id=family.id, quote=quote,
                          card=Card("4242424242424242", 12, now.year + 3, "123", FAMILY[2]),
                          key=f"demo-seed:{family.id}", now=now)
        await audit.record(conn, actor_id=admin.id, actor_role="admin", action="demo.seed",
                           facility_id=facility.id, at=now)
    return Demo(facility.id, True)


def show_demo(demo: Demo) -> None:
    lines = [
        "Demo data " + ("created" if demo.created else "already present") + ":",
        f"  facility id      {demo.facility_id}",
        f"  family           {FAMILY[0]} / {FAMILY[1]}",
        f"  staff            {STAFF[0]} / {STAFF[1]}",
        f"  admin            {ADMIN[0]} / {ADMIN[1]}",
        f"  kiosk token      {KIOSK_TOKEN}",
    ] + [f"  person           {number} PIN {pin} ({name})" for name, number, pin in PEOPLE]
    print("\n".join(lines), flush=True)
