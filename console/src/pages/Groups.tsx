// Consumer groups: the list, and one group's partitions with lag over time.

import { enc, getJson, isDotSegment, type GroupDoc, type GroupSummary } from "../api";
import { n } from "../format";
import { points, record } from "../history";
import { useNow, usePoll } from "../hooks";
import { Sparkline } from "../Sparkline";

export function GroupsPage() {
  const polled = usePoll(() => getJson<{ groups: GroupSummary[] }>("/groups"), 3000, []);
  const groups = polled.data?.groups;
  return (
    <div data-testid="groups-page">
      <h1>Consumer groups</h1>
      {polled.error ? <p class="error">{polled.error}</p> : null}
      {!groups ? (
        <p class="muted">Loading…</p>
      ) : groups.length === 0 ? (
        <p class="muted">No consumer groups.</p>
      ) : (
        <table class="data" data-testid="groups-table">
          <thead>
            <tr>
              <th>group</th>
              <th>state</th>
              <th class="num">members</th>
            </tr>
          </thead>
          <tbody>
            {groups.map((g) => (
              <tr data-testid="group-row" data-name={g.group} key={g.group}>
                <td class="mono">
                  <a href={`#/groups/${enc(g.group)}`}>{g.group}</a>
                </td>
                <td>
                  <span class={`badge group-${g.state}`}>{g.state}</span>
                </td>
                <td class="num">{n(g.members)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

const lagKey = (g: string, tp: string) => `lag:${g}\u0000${tp}`;

export function GroupPage({ group }: { group: string }) {
  return isDotSegment(group) ? <DotGroupPage group={group} /> : <GroupDetail group={group} />;
}

/** A group named `.` or `..`: a browser resolves `/groups/%2E%2E` to `/` before sending it, so
 * only the list's summary can be shown, with how to read the rest. */
function DotGroupPage({ group }: { group: string }) {
  const polled = usePoll(() => getJson<{ groups: GroupSummary[] }>("/groups"), 3000, []);
  const g = polled.data?.groups.find((x) => x.group === group);
  return (
    <div data-testid="group-page" data-name={group}>
      <p class="crumbs">
        <a href="#/groups">Consumer groups</a> / <span class="mono">{group}</span>
      </p>
      <h1 class="mono">{group}</h1>
      {polled.error ? <p class="error">{polled.error}</p> : null}
      {!polled.data ? (
        <p class="muted">Loading…</p>
      ) : !g ? (
        <p class="error">No group {group} (GET /groups does not list it).</p>
      ) : (
        <p>
          state <span class={`badge group-${g.state}`}>{g.state}</span> · members {n(g.members)}
        </p>
      )}
      <p class="muted" data-testid="group-dot-name">
        A browser cannot ask for this group's partitions: it resolves a <code>{group}</code> path
        segment (even written <code>{enc(group)}</code>) before sending, so{" "}
        <code>GET /groups/{enc(group)}</code> would reach <code>{group === "." ? "/groups/" : "/"}</code>.
        Ask the worker directly: <code>curl --path-as-is …/groups/{enc(group)}</code>.
      </p>
    </div>
  );
}

function GroupDetail({ group }: { group: string }) {
  const polled = usePoll(
    () => getJson<GroupDoc>(`/groups/${enc(group)}`),
    2000,
    [group],
    (d, at) => {
      let total = 0;
      for (const p of d.partitions) {
        const lag = p.lag ?? 0;
        total += lag;
        record(lagKey(group, `${p.topic}/${p.partition}`), at, lag);
      }
      record(lagKey(group, "*"), at, total);
    },
  );
  const now = useNow(2000);
  const g = polled.data;
  const total = g?.partitions.reduce((s, p) => s + (p.lag ?? 0), 0);
  return (
    <div data-testid="group-page" data-name={group}>
      <p class="crumbs">
        <a href="#/groups">Consumer groups</a> / <span class="mono">{group}</span>
      </p>
      <h1 class="mono">{group}</h1>
      {polled.error ? <p class="error">{polled.error}</p> : null}
      {!g ? (
        <p class="muted">Loading…</p>
      ) : (
        <>
          <p>
            state <span class={`badge group-${g.state}`}>{g.state}</span> · members {n(g.members)} · total lag{" "}
            <b data-testid="group-total-lag">{n(total)}</b>
          </p>
          <section class="card">
            <h2>Total lag, last 5 minutes</h2>
            <Sparkline
              now={now}
              width={480}
              height={80}
              testid="group-lag-chart"
              lines={[{ points: points(lagKey(group, "*")), className: "line-lag", label: "lag" }]}
            />
          </section>
          <table class="data" data-testid="group-partitions">
            <thead>
              <tr>
                <th>topic</th>
                <th class="num">partition</th>
                <th class="num">committed</th>
                <th class="num">log end</th>
                <th class="num">lag</th>
                <th>lag over time</th>
                <th>member</th>
              </tr>
            </thead>
            <tbody>
              {g.partitions.map((p) => (
                <tr data-testid="group-partition">
                  <td class="mono">
                    <a href={`#/topics/${enc(p.topic)}`}>{p.topic}</a>
                  </td>
                  <td class="num">{p.partition}</td>
                  <td class="num">{n(p.committed)}</td>
                  <td class="num">{n(p.log_end)}</td>
                  <td class={`num ${(p.lag ?? 0) > 0 ? "warn" : ""}`}>{n(p.lag)}</td>
                  <td>
                    <Sparkline
                      now={now}
                      lines={[
                        {
                          points: points(lagKey(group, `${p.topic}/${p.partition}`)),
                          className: "line-lag",
                          label: "lag",
                        },
                      ]}
                    />
                  </td>
                  <td class="mono">{p.member ?? "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
    </div>
  );
}
