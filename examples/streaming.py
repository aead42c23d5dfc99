"""Follow a foreground job as it runs: streamed output, progress and warnings.

The worker sends chunks of output (WORK_DATA), progress (WORK_STATUS) and a
warning (WORK_WARNING) while it runs; the client iterates the job and gets each
update as it arrives, then the job's result.

To keep the example self-contained the worker runs in the same process as the
client; in production they are separate programs. Run it against a job server::

    python examples/streaming.py 127.0.0.1:4730 one 2 three
"""

from __future__ import annotations

import sys

import trio

import trio_gearman


async def shout(job: trio_gearman.Job) -> bytes:
    """Upper-case the job's words one by one, streaming each as it is done."""
    words = job.data.split()
    for done, word in enumerate(words, start=1):
        if not word.isalpha():
            await job.send_warning(b"not a word: " + word)
        await job.send_data(word.upper())
        await job.send_status(done, len(words))
    return b"%d words" % len(words)


async def follow(server: str, text: str) -> None:
    async with trio_gearman.Client([server]) as client:
        async with client.submit_job("shout", text) as job:
            print(f"submitted {job.handle}")
            async for update in job:
                if isinstance(update, trio_gearman.WorkData):
                    print(f"data: {update.data.decode()}")
                elif isinstance(update, trio_gearman.WorkStatus):
                    print(f"progress: {update.numerator}/{update.denominator}")
                else:  # trio_gearman.WorkWarning
                    print(f"warning: {update.data.decode()}")
        print(f"result: {job.result.decode()}")


async def main(server: str, text: str) -> None:
    worker = trio_gearman.Worker([server], client_id="shouter")
    worker.register("shout", shout)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(30):
            await follow(server, text)
        worker.stop()


if __name__ == "__main__":
    server = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4730"
    trio.run(main, server, " ".join(sys.argv[2:]) or "hello 4 streaming world")
