"""A bot player for examples/arena: joins `arena:1`, says hello in the chat, steers at
random and prints where it is once a second.

    python bot.py alice [--url ws://127.0.0.1:8080/v1/ws] [--room arena:1] [--seconds 30]

Uses aiohttp's WebSocket client (installed with wsPrism).
"""
import argparse
import asyncio
import json
import random
import struct
import time

import aiohttp

from arena import OP_STEER, decode_state

SVC_ID = 7


async def play(url: str, name: str, room: str, seconds: float) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}?tenant=arena&ticket=dev:{name}") as ws:
            authed = json.loads((await ws.receive()).data)
            print("authed as", authed["data"]["user"])
            await ws.send_str(json.dumps({"v": 1, "svc": "room", "type": "join", "room": room}))
            await ws.send_str(json.dumps({"v": 1, "svc": "chat", "type": "send", "room": room,
                                          "data": {"msg": f"{name} is here"}}))
            slot, end, last_print, last_steer = None, time.monotonic() + seconds, 0.0, 0.0
            while time.monotonic() < end:
                now = time.monotonic()
                if now - last_steer > 0.2:
                    last_steer = now
                    dx, dy = random.choice((-1, 0, 1)), random.choice((-1, 0, 1))
                    await ws.send_bytes(bytes([SVC_ID, OP_STEER, 0]) + struct.pack("bb", dx, dy))
                try:
                    msg = await ws.receive(timeout=0.2)
                except asyncio.TimeoutError:
                    continue
                if msg.type == aiohttp.WSMsgType.BINARY:
                    tick, players = decode_state(msg.data)
                    if slot in players and now - last_print > 1.0:
                        last_print = now
                        print(f"tick {tick}: {name} at {players[slot]} ({len(players)} players)")
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    m = json.loads(msg.data)
                    if m.get("type") == "roster":
                        players = m["data"]["players"]
                        slot = next((int(s) for s, user in players.items() if user == name), slot)
                        print("roster:", players)
                    elif m.get("svc") == "chat":
                        print(f"chat {m['data']['from']}: {m['data']['msg']}")
                    elif m.get("type") == "error":
                        print("error:", m["data"])
                else:
                    print("connection closed:", msg.type, ws.close_code)
                    return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--url", default="ws://127.0.0.1:8080/v1/ws")
    ap.add_argument("--room", default="arena:1")
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    asyncio.run(play(args.url, args.name, args.room, args.seconds))


if __name__ == "__main__":
    main()
