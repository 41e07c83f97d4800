# The derivations of the benchmark lower store built by scripts/make-bench-store.sh.
#
# Like scripts/nix/lower.nix: Nix 2.8 without nixpkgs, /bin/sh as the only builder (bind-
# mounted into the sandbox) and a "bootstrap tools" object holding the host's mkdir, chmod,
# ln and cat.  Arguments:
#   tools       logical store path of the tools object
#   inputsFile  a JSON file (outside the store) listing logical store paths of objects added
#               with `nix-store --add`; derivations pick their inputs from it
#   count       how many derivations to make (as a string: --argstr)
#
# Derivation i (0-based) depends on three added objects chosen by index and on the outputs
# of derivations i-1 and i/2, so late outputs have deep closures.  Each output refers to its
# inputs three ways Nix's reference scanner sees: paths written into text files, a script
# that names them, and symlinks to them.  It also holds 40 small generated files.
{ tools, inputsFile, count }:

let
  system = builtins.currentSystem;
  toolsPath = builtins.storePath tools;
  inputs = map builtins.storePath (builtins.fromJSON (builtins.readFile inputsFile));
  nInputs = builtins.length inputs;
  n = builtins.fromJSON count;
  mod = a: b: a - (a / b) * b;
  pick = i: k: builtins.elemAt inputs (mod (i * 7 + k * 131 + k * k * 17) nInputs);

  pkg = i:
    let
      objs = [ (pick i 0) (pick i 1) (pick i 2) ];
      prev = if i == 0 then [ ] else [ (pkgs i (i - 1)) ] ++ (if i / 2 != i - 1 && i > 1 then [ (pkgs i (i / 2)) ] else [ ]);
    in
    derivation {
      name = "bench-pkg-${toString i}";
      inherit system;
      builder = "/bin/sh";
      PATH = "${toolsPath}/bin";
      inherit objs prev;
      args = [ "-c" ''
        set -e
        mkdir -p $out/bin $out/lib/deps $out/share/bench-pkg $out/nix-support
        : > $out/nix-support/inputs
        k=0
        for d in $objs $prev; do
          echo "$d" >> $out/nix-support/inputs
          ln -s "$d" $out/lib/deps/dep-$k
          k=$((k + 1))
        done
        printf '#!/bin/sh\n# bench-pkg-${toString i}\n' > $out/bin/bench-pkg-${toString i}
        for d in $prev; do printf '. %s/bin/*\n' "$d" >> $out/bin/bench-pkg-${toString i}; done
        chmod 0555 $out/bin/bench-pkg-${toString i}
        j=0
        while [ $j -lt 40 ]; do
          line="bench-pkg-${toString i} data file $j: the quick brown fox jumps over the lazy dog"
          { echo "$line"; echo "$line"; echo "$line"; echo "$line"; echo "$line"; echo "$line"; } > $out/share/bench-pkg/data-$j.txt
          j=$((j + 1))
        done
      '' ];
    };

  # pkgs i j: the output of derivation j (j < i); genList memoises through `all`.
  pkgs = _: j: builtins.elemAt all j;
  all = builtins.genList pkg n;
in
{
  inherit all;
}
