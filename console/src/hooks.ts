// Polling and routing hooks.

import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { useAuth } from "./api";

export interface Polled<T> {
  data: T | null;
  error: string | null;
  /** When the last answer came (ms). */
  at: number;
  reload: () => void;
}

/** Fetches now and every `ms` while mounted (not while the tab is hidden), again when
 * `deps` or the token change. `onData` sees every answer (for histories). */
export function usePoll<T>(
  load: () => Promise<T>,
  ms: number,
  deps: unknown[],
  onData?: (d: T, at: number) => void,
): Polled<T> {
  const { epoch } = useAuth();
  const [state, setState] = useState<{ data: T | null; error: string | null; at: number }>({
    data: null,
    error: null,
    at: 0,
  });
  const loadRef = useRef(load);
  loadRef.current = load;
  const onDataRef = useRef(onData);
  onDataRef.current = onData;
  const hasData = useRef(false);
  const [kick, setKick] = useState(0);
  const reload = useCallback(() => setKick((k) => k + 1), []);

  useEffect(() => {
    let live = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let busy = false;
    const tick = async () => {
      if (busy) return;
      busy = true;
      try {
        if (document.visibilityState !== "hidden" || !hasData.current) {
          const d = await loadRef.current();
          if (!live) return;
          hasData.current = true;
          const at = Date.now();
          onDataRef.current?.(d, at);
          setState({ data: d, error: null, at });
        }
      } catch (e) {
        if (!live) return;
        setState((s) => ({ ...s, error: (e as Error).message }));
      } finally {
        busy = false;
        if (live && ms > 0) timer = setTimeout(tick, ms);
      }
    };
    tick();
    return () => {
      live = false;
      if (timer) clearTimeout(timer);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, epoch, kick, ms]);

  return { ...state, reload };
}

/** The route: the part of the hash after `#/`, split on `/` and decoded. */
export function useRoute(): string[] {
  const parse = () =>
    location.hash
      .replace(/^#\/?/, "")
      .split("/")
      .filter((s) => s !== "")
      .map((s) => {
        try {
          return decodeURIComponent(s);
        } catch {
          return s;
        }
      });
  const [route, setRoute] = useState(parse);
  useEffect(() => {
    const on = () => setRoute(parse());
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return route;
}

/** A ticking clock (for "x s ago"). */
export function useNow(ms = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}
