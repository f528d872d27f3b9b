"""The words of a family's notification emails (server/mail.py) in each language the apps have
(docs/clients.md, "Languages"). A family's language is the one its app last ran in
(notification_prefs.language, PUT /notifications); English for a family that never said.
Dates, times and amounts are written the same in every language (2026-12-07 12:00, $6.50).
"""

from __future__ import annotations

import re

LANGUAGES = ("en", "es")
DEFAULT = "en"

WORDS: dict[str, dict[str, str]] = {
    "en": {
        "hello": "Hello {name},",
        "open": "Open Kinwire: {link}",
        "choose": "Choose which emails you get: {link}",
        "unsubscribe": "Unsubscribe from all: {link}",
        "a_contact": "A contact",
        "your_contact": "Your contact",
        "message.subject": "New message from {who}",
        "message.one": "{n} new message from {who}. Read it in Kinwire.",
        "message.many": "{n} new messages from {who}. Read them in Kinwire.",
        "connection.subject": "Connection approved: {who}",
        "connection.line": "The facility approved your connection with {who}. You can now "
                           "write and book visits.",
        "booked.subject": "Visit booked",
        "booked.line": "Your video visit is booked for {when}.",
        "cancelled.subject": "Visit cancelled",
        "cancelled.line": "Your video visit of {when} was cancelled.",
        "ended.subject": "Visit ended",
        "ended.line": "Your video visit of {when} ended ({reason}).",
        "ended.cost": "Minutes: {minutes}. Cost: {cost} credits.",
        "low.subject": "Your Kinwire balance is low",
        "low.line": "Your balance is {balance} credits. Add credits to keep writing and visiting.",
        "reminder.subject": "Visit reminder",
        "reminder.line": "Your video visit starts at {when} ({zone}). Join it from the Visits tab.",
        "receipt.subject": "Your Kinwire receipt",
        "receipt.purchase": "Purchase {id}, {at}",
        "receipt.credits": "Credits: {credits}",
        "receipt.amount": "Amount: {amount}",
        "receipt.fee": "Fee: {fee}",
        "receipt.total": "Total charged: {total} ({brand} ending {last4})",
        "reset.subject": "Reset your Kinwire password",
        "reset.asked": "Someone (we hope you) asked to reset your Kinwire password.",
        "reset.within": "Set a new one here within {minutes} minutes (the link works once):",
        "reset.not_you": "If it was not you, ignore this email: your password stays as it is.",
    },
    "es": {
        "hello": "Hola, {name}:",
        "open": "Abrir Kinwire: {link}",
        "choose": "Elija qué correos recibe: {link}",
        "unsubscribe": "Darse de baja de todos: {link}",
        "a_contact": "Un contacto",
        "your_contact": "Su contacto",
        "message.subject": "Nuevo mensaje de {who}",
        "message.one": "{n} mensaje nuevo de {who}. Léalo en Kinwire.",
        "message.many": "{n} mensajes nuevos de {who}. Léalos en Kinwire.",
        "connection.subject": "Conexión aprobada: {who}",
        "connection.line": "El centro aprobó su conexión con {who}. Ya puede escribirle y "
                           "reservar visitas.",
        "booked.subject": "Visita reservada",
        "booked.line": "Su videovisita quedó reservada para el {when}.",
        "cancelled.subject": "Visita cancelada",
        "cancelled.line": "Se canceló su videovisita del {when}.",
        "ended.subject": "Visita terminada",
        "ended.line": "Su videovisita del {when} terminó ({reason}).",
        "ended.cost": "Minutos: {minutes}. Costo: {cost} créditos.",
        "low.subject": "Su saldo de Kinwire está bajo",
        "low.line": "Su saldo es de {balance} créditos. Agregue créditos para seguir escribiendo "
                    "y haciendo visitas.",
        "reminder.subject": "Recordatorio de visita",
        "reminder.line": "Su videovisita empieza el {when} ({zone}). Entre desde la pestaña "
                         "Visitas.",
        "receipt.subject": "Su recibo de Kinwire",
        "receipt.purchase": "Compra {id}, {at}",
        "receipt.credits": "Créditos: {credits}",
        "receipt.amount": "Importe: {amount}",
        "receipt.fee": "Cargo: {fee}",
        "receipt.total": "Total cobrado: {total} ({brand} terminada en {last4})",
        "reset.subject": "Restablezca su contraseña de Kinwire",
        "reset.asked": "Alguien (esperamos que usted) pidió restablecer su contraseña de Kinwire.",
        "reset.within": "Cree una nueva aquí dentro de {minutes} minutos (el enlace funciona una "
                        "sola vez):",
        "reset.not_you": "Si no fue usted, ignore este correo: su contraseña sigue igual.",
        # why a visit ended (signalling's end reasons); English says the code in words
        "reason.time_up": "se acabó el tiempo de visita",
        "reason.hung_up": "se colgó la llamada",
        "reason.balance_exhausted": "se agotó el saldo",
        "reason.staff_ended": "la terminó el personal",
        "reason.failed": "un error de cobro la detuvo",
        "reason.missed": "las dos partes nunca estuvieron juntas en la llamada",
    },
}

# The new-message email's count line in each language, to count one more into an unsent one.
_COUNT = {
    "en": re.compile(r"^(\d+) new messages? from (.*)\. Read (?:it|them) in Kinwire\.$",
                     re.MULTILINE),
    "es": re.compile(r"^(\d+) mensajes? nuevos? de (.*)\. Léalos? en Kinwire\.$", re.MULTILINE),
}


def words(language: str | None) -> dict[str, str]:
    """The words of `language`, English for none or one the apps do not have."""
    return WORDS.get(language or DEFAULT, WORDS[DEFAULT])


def count_line(n: int, who: str, language: str | None) -> str:
    w = words(language)
    return (w["message.one"] if n == 1 else w["message.many"]).format(n=n, who=who)


def one_more(body: str) -> str:
    """The count line says one message more ("1 new message from X" -> "2 new messages from
    X", in the body's language); a body without one is left as it is."""
    for language, pattern in _COUNT.items():
        if pattern.search(body):
            return pattern.sub(lambda m, lang=language: count_line(int(m.group(1)) + 1,
                                                                     m.group(2), lang),
                               body, count=1)
    return body


def reason(code: str, language: str | None) -> str:
    """Why a visit ended, in words."""
    return words(language).get(f"reason.{code}", code.replace("_", " "))
