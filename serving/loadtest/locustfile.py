"""The request mix of the load test: batch forecasts (10), on-demand forecasts (5), bad input (1).

Run by ``python -m serving.loadtest`` (headless, bounded); the on-demand requests carry the
newest hour's observations, so the server rebuilds the feature row every time. A bad request
counts as a success when it gets the 4xx it deserves, and as a failure otherwise.
"""

from __future__ import annotations

import itertools
import json
import random

from locust import FastHttpUser, constant, task

BAD = [
    ("negative concentration", "application/json",
     lambda loc, hour: json.dumps({"location_id": loc,
                                   "observations": [{"time": hour, "pm2_5": -5.0}]}), 422),
    ("malformed JSON", "application/json", lambda loc, hour: '{"location_id": ', 400),
    ("unknown location", "application/json",
     lambda loc, hour: json.dumps({"location_id": "atlantis"}), 404),
    ("wrong content type", "text/plain", lambda loc, hour: "location_id=" + loc, 415),
]


class ForecastUser(FastHttpUser):
    wait_time = constant(0)  # closed loop: each user sends its next request on the answer

    def on_start(self) -> None:
        with self.client.get("/v1/locations", name="setup", catch_response=True) as reply:
            self.locations = [loc["id"] for loc in reply.json()["locations"]] or ["berlin"]
        self.newest = {}
        for location in self.locations:
            reply = self.client.post("/v1/forecasts", json={"location_id": location},
                                     name="setup")
            self.newest[location] = reply.json()["issue_time"] if reply.status_code == 200 \
                else None
        self.bad = itertools.cycle(BAD)

    @task(10)
    def batch_forecast(self) -> None:
        location = random.choice(self.locations)
        self.client.get(f"/v1/forecasts/{location}", name="GET /v1/forecasts/{id}")

    @task(5)
    def on_demand_forecast(self) -> None:
        location = random.choice(self.locations)
        body = {"location_id": location}
        if self.newest.get(location):
            body["observations"] = [{
                "time": self.newest[location], "pm2_5": round(random.uniform(2, 120), 1),
                "temperature_2m": round(random.uniform(-5, 30), 1),
                "relative_humidity_2m": round(random.uniform(20, 100), 1),
                "wind_speed_10m": round(random.uniform(0, 12), 1),
                "wind_direction_10m": round(random.uniform(0, 359), 1)}]
        self.client.post("/v1/forecasts", json=body, name="POST /v1/forecasts")

    @task(1)
    def bad_input(self) -> None:
        case, content_type, make, expected = next(self.bad)
        location = random.choice(self.locations)
        with self.client.post("/v1/forecasts", data=make(location, self.newest.get(location)),
                              headers={"Content-Type": content_type},
                              name=f"bad: {case}", catch_response=True) as reply:
            if reply.status_code == expected:
                reply.success()
            else:
                reply.failure(f"expected {expected}, got {reply.status_code}")
