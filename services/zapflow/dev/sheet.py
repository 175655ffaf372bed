"""What `zapflow dev` prints: the start-up sheet, and a line for each restart."""

from __future__ import annotations

from zapflow.dev.plan import RESTART, DevPlan
from zapflow.platform.supervisor import ProcessEvent, describe_exit


def startup_sheet(plan: DevPlan) -> str:
    ports, addresses = plan.ports, plan.addresses
    return (
        "\n[bold green]zapflow is running[/]\n"
        f"  web chat (sandbox)  {plan.url(ports.sandbox)}/\n"
        f"  webhook (gateway)   {plan.url(ports.gateway)}/webhook/whatsapp\n"
        f"  gateway metrics     {plan.url(ports.gateway)}/metrics\n"
        f"  conversation        {plan.url(ports.conversation)}/metrics\n"
        f"  recorder            {plan.url(ports.recorder)}/metrics\n"
        f"  scheduler, admin    {addresses.admin_url}/admin/v1/ (erasures, campaigns; token: changethis)\n"
        "  a campaign          zapflow campaign create --tenant demo --template follow_up --language en_US"
        " --contacts FILE.csv\n"
        f"  embedding           {plan.url(ports.embedding)}/metrics (zapflow kb, zapflow search)\n"
        f"  agents' inbox       {plan.url(ports.handoff)}/inbox/ (API: /api/v1/docs)\n"
        "  an agent for it     zapflow agent add --tenant demo --email you@example.com\n"
        f"  analytics           {addresses.analytics_path}\n"
        f"  database            {addresses.database_url}\n"
        f"  nats                {addresses.nats_url}\n"
        f"  redis               {addresses.redis_url}\n"
        f"  logs                {plan.logs}/\n"
        "  a live view         zapflow status (services, lag, dead letters, turn rate)\n"
        "A process that stops is restarted, as in a cluster; "
        f"{RESTART.crash_loop_restarts + 1} exits within {RESTART.crash_loop_window_s:.0f} s stop the stack.\n"
        "Press Ctrl-C to stop."
    )


def event_line(event: ProcessEvent) -> str | None:
    """The console's line for a supervisor event; None for those the next line says better."""
    if event.kind == "restarting":
        return (
            f"[yellow]{event.name} exited ({describe_exit(event.exit_code)}); restarting it in {event.delay_s:.1f} s[/]"
        )
    if event.kind == "ready again":
        return f"[green]{event.name} is ready again (restart {event.restarts})[/]"
    if event.kind == "killed at stop":
        return f"[yellow]{event.name} did not stop in time; killed it[/]"
    return None  # "exited" comes with "restarting"; "gave up" ends the stack with its own message
