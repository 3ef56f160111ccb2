"""Quick start: a normal channel, a reply channel and a group on the memory backend."""

import asyncio

import layers


async def main() -> None:
    async with layers.from_url("memory://") as layer:
        await layer.send("thumbnails", {"type": "thumbnail.make", "id": 42})
        print(await layer.receive("thumbnails"))

        reply = await layer.new_channel()
        await layer.send(reply, {"type": "done"})
        print(await layer.receive(reply))

        await layer.group_add("liveblog", reply)
        await layer.group_send("liveblog", {"type": "post", "text": "hello"})
        print(await layer.receive(reply))


if __name__ == "__main__":
    asyncio.run(main())
