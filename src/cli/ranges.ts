/** An accepted range for a numeric option: bounds included, `integer` when fractions make no sense. */
export interface Range { min: number; max: number; integer?: boolean; unit: string }

/**
 * A yargs `.check()` for numeric options: yargs turns `abc` into NaN and takes `1e10` or `-5`
 * as they are, which would give a NaN timer (a busy loop), an overflowing one, or a negative
 * timeout. Returns true, or the usage message naming the option and its range (exit 2 through
 * main's fail handler; a thrown Error would count as a failure instead).
 */
export function checkRanges(ranges: Record<string, Range>): (argv: Record<string, unknown>) => true | string {
  return (argv) => {
    for (const [name, r] of Object.entries(ranges)) {
      const v = argv[name];
      if (v === undefined) continue;
      const values = Array.isArray(v) ? v : [v];
      if (values.length !== 1) return `--${name} is given ${values.length} times (${values.map(String).join(', ')}); give it once`;
      if (typeof values[0] !== 'number' || !Number.isFinite(values[0])
        || values[0] < r.min || values[0] > r.max || (r.integer === true && !Number.isInteger(values[0]))) {
        return `--${name} must be ${r.integer ? 'a whole number' : 'a number'} of ${r.unit} from ${r.min} to ${r.max} (got ${typeof values[0] === 'number' && Number.isNaN(values[0]) ? given(name) : String(values[0])})`;
      }
    }
    return true;
  };
}

/** What the command line said for `--name` (yargs made a NaN of it): `--name=V` or `--name V`. */
function given(name: string): string {
  const args = process.argv;
  for (const [i, a] of args.entries()) {
    if (a.startsWith(`--${name}=`)) return a.slice(name.length + 3);
    if (a === `--${name}` && i + 1 < args.length) return args[i + 1]!;
  }
  return 'not a number';
}
