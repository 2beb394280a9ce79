"""An example backend for wsPrism: a chat room with a bot, in one small aiohttp app.

    pip install aiohttp
    python examples/backend.py                       # listens on 127.0.0.1:9000
    DEMO_API_KEY=change-me wsprism start --config examples/wsprism-backend.yaml

The gateway calls two endpoints (docs/backend.md describes both formats):

- POST /auth    the auth webhook: ticket `demo:<name>` is user <name> for one hour;
                any other ticket is refused (403).
- POST /ws/bot  the service webhook of svc `bot`:
                  bot:say  {"room": r, "data": {"text": "..."}}  the text goes to the room
                           (`bot.said`); a text starting with `!` is also a command for the
                           bot: `!roll` (the bot answers in the room), `!time` (only the
                           sender gets the answer, as `reply`), `!who` (the bot asks the
                           gateway's server API who is in the room, and replies).
                  bot:help the list of commands, as `reply`.

The backend keeps no state: who is where lives in the gateway, which it asks through
the server API (`DEMO_API_URL`, default http://127.0.0.1:8090, with `DEMO_API_KEY`).
"""
import os
import random
import time

from aiohttp import ClientSession, web

MAX_TEXT = 500
API_URL = web.AppKey("api_url", str)
HTTP = web.AppKey("http", ClientSession)
HELP = ["!roll: roll a die for the room", "!time: the server's time, just for you", "!who: who is in this room"]


async def auth(request: web.Request) -> web.Response:
    """{"tenant","ticket","ip","sid"} → {"user","exp"} (2xx) or a refusal (any other status)."""
    body = await request.json()
    ticket = body.get("ticket", "")
    kind, _, name = ticket.partition(":")
    if kind != "demo" or not name or len(name) > 32 or not name.isalnum():
        return web.json_response({"error": "unknown ticket"}, status=403)
    return web.json_response({"user": name, "exp": int(time.time()) + 3600})


async def bot(request: web.Request) -> web.Response:
    """{"tenant","user","sid","trace_id","msg":<the client's envelope>} → {"reply"?, "publish"?, "error"?}."""
    body = await request.json()
    user, msg = body["user"], body["msg"]
    if msg["type"] == "help":
        return web.json_response({"reply": HELP})
    if msg["type"] != "say":
        return error("BAD_REQUEST", f"bot has no type {msg['type']!r}")
    room = msg.get("room")
    data = msg.get("data")
    text = data.get("text") if isinstance(data, dict) else None
    if not room:
        return error("BAD_REQUEST", "bot:say needs a room")
    if not isinstance(text, str) or not text or len(text) > MAX_TEXT:
        return error("BAD_REQUEST", f"data.text must be 1-{MAX_TEXT} characters")
    publish = [said(room, user, text)]
    answer = {"publish": publish}
    if text == "!roll":
        publish.append(said(room, "bot", f"{user} rolled a {random.randint(1, 6)}"))
    elif text == "!time":
        answer["reply"] = {"time": time.strftime("%H:%M:%S")}
    elif text == "!who":
        presence = await ask_gateway(request.app, "presence", tenant=body["tenant"], room=room, limit="50")
        answer["reply"] = {"room": room, "count": presence["count"], "users": presence["users"]}
    return web.json_response(answer)


def said(room: str, who: str, text: str) -> dict:
    return {"room": room, "svc": "bot", "type": "said", "data": {"from": who, "text": text}}


def error(code: str, msg: str) -> web.Response:
    # Still a 2xx: the client gets `sys.error` with this code; the session stays open.
    return web.json_response({"error": {"code": code, "msg": msg}})


async def ask_gateway(app: web.Application, what: str, **params) -> dict:
    """GET /v1/<what> on the gateway's server API."""
    async with app[HTTP].get(f"{app[API_URL]}/v1/{what}", params=params) as resp:
        resp.raise_for_status()
        return await resp.json()


def make_app(api_url: str, api_key: str) -> web.Application:
    app = web.Application()
    app[API_URL] = api_url

    async def client(app):
        async with ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as http:
            app[HTTP] = http
            yield

    app.cleanup_ctx.append(client)
    app.router.add_post("/auth", auth)
    app.router.add_post("/ws/bot", bot)
    return app


if __name__ == "__main__":
    app = make_app(os.environ.get("DEMO_API_URL", "http://127.0.0.1:8090"), os.environ.get("DEMO_API_KEY", ""))
    web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "9000")))
