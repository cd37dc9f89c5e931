"""hangwd: the gateway daemon. Installs the asyncio reactor first, so zigpy can share the loop."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hangwd", description="Run the hangw gateway.")
    parser.add_argument("--config", help="TOML configuration (default: config/hangw.toml)")
    args = parser.parse_args(argv)

    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)

    from hangw import config as config_module
    from hangw import logs

    try:
        config = config_module.load(args.config)
    except config_module.ConfigError as error:
        print(f"hangwd: {error}", file=sys.stderr)
        return 2
    logs.configure(config.logging.level, config.logging.format)
    logs.route_twisted_logs()

    import sqlalchemy as sa
    import structlog
    from twisted.internet import reactor

    from hangw import affinity
    from hangw.api.listener import ServerCertificateError
    from hangw.gateway import Gateway
    from hangw.secrets import SecretKeyError

    log = structlog.get_logger("hangwd")

    def why(error: Exception) -> str:
        if isinstance(error, sa.exc.SQLAlchemyError):  # its text may hold SQL and parameters
            return config_module.store_problem(config, error)
        return str(error) or type(error).__name__

    try:  # before any thread starts, so that every thread inherits the CPU
        cpu = affinity.pin(config.gateway.cpu)
    except ValueError as error:
        print(f"hangwd: gateway.cpu: {error}", file=sys.stderr)
        return 2
    try:
        gateway = Gateway(config, reactor)
    except config_module.ConfigError as error:
        print(f"hangwd: {error}", file=sys.stderr)
        return 2
    except SecretKeyError as error:
        print(
            f"hangwd: store.key_file: {error}; restore the key file from the backup taken with "
            "the store (the install codes and link keys in the store are sealed with it, and a "
            "new key could not open them)",
            file=sys.stderr,
        )
        return 2
    except ServerCertificateError as error:
        print(
            f"hangwd: api.cert_dir: {error}; put back the matching pair, or run `hangw certs "
            f"init` to make them anew in {config.cert_dir}",
            file=sys.stderr,
        )
        return 2
    except Exception as error:  # said in one line; the log keeps the type
        log.error("hangwd.start_failed", error=why(error), error_type=type(error).__name__)
        print(f"hangwd: could not start: {why(error)}", file=sys.stderr)
        return 1

    failed: list[str] = []

    def started() -> None:
        # What exists now (modules, configuration, tables) lives as long as the daemon: keep it
        # out of the collector's full passes, which otherwise walk it again and again under load.
        gc.collect()
        gc.freeze()
        try:
            gateway.startService()
        except Exception as error:
            failed.append(why(error))
            log.error("hangwd.start_failed", error=why(error), error_type=type(error).__name__)
            print(f"hangwd: could not start: {why(error)}", file=sys.stderr)
            reactor.stop()
            return
        log.info(
            "hangwd.started",
            config=config.source,
            api=f"https://{config.api.host}:{config.api.port}",
            ops=f"http://{config.api.host}:{config.api.ops_port}",
            store=config_module.safe_url(config.store_url),
            adapters=[f"{a.tdsp_duns}:{a.kind}" for a in config.adapters],
            cpu=cpu if cpu is not None else "any",
        )

    stopping: list[str] = []
    core: Any = reactor  # the asyncio reactor: IReactorCore and IReactorThreads

    def stop_on_signal(number: int, frame: object) -> None:
        """SIGTERM or SIGINT: stop once; another while stopping (or exiting) is only noted."""
        name = signal.Signals(number).name
        if stopping or failed:  # (start-up failed: the reactor is stopping already)
            if core.running:
                core.callFromThread(log.info, "hangwd.already_stopping", signal=name)
            return
        stopping.append(name)
        core.callFromThread(log.info, "hangwd.stopping", signal=name)
        core.callFromThread(core.stop)

    # the daemon's own handlers rather than Twisted's: those stop the reactor on every signal
    # (a second one while stopping logged ReactorNotRunning as critical) and are put back to
    # the defaults when the reactor returns, so that one arriving as hangwd exits killed it
    # after a clean stop; ignored from then on (Python resets its own handlers to the defaults
    # as it exits, but leaves an ignored signal ignored)
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
    core.run(installSignalHandlers=False)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log.info("hangwd.stopped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
