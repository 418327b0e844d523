"""Run the app in several uvicorn worker processes, each listening on its own SO_REUSEPORT socket.

With one shared listening socket (uvicorn's own --workers), whichever worker wakes first accepts
a burst of keep-alive connections and the others idle; separate SO_REUSEPORT sockets let the
kernel spread connections evenly over the workers.
"""
from __future__ import annotations

import logging
import multiprocessing
import socket
from typing import Any

from fhirserver.settings import Settings

log = logging.getLogger("fhirserver")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(settings: Settings, options: dict[str, Any]) -> None:
    import uvicorn

    from fhirserver.app import build_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn.Config(build_app(settings), **options))
    server.run(sockets=[_listen(settings.host, settings.port)])


def run_workers(settings: Settings, options: dict[str, Any]) -> None:
    """Start `settings.workers` processes and wait; Ctrl-C / SIGTERM stops them all gracefully."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(settings, options), name=f"fhirserver-worker-{n}")
                 for n in range(settings.workers)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        log.info("stopping %d workers", len(processes))
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()            # uvicorn finishes in-flight requests on SIGTERM
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
