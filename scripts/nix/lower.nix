# The derivations of the test *lower* store built by scripts/make-lower-store.sh.
#
# Nix 2.8 without nixpkgs: only `derivation`, `builtins.*` and /bin/sh (bind-mounted
# into the build sandbox through `sandbox-paths`).  /bin/sh (dash) has no mkdir, chmod
# or ln, so a tiny "bootstrap tools" store object (copies of the host's coreutils,
# added with `nix-store --add` by the script, like nixpkgs' bootstrap tools) provides
# them; they are dynamically linked against the host's /lib, which the sandbox has.
#
# Arguments are logical store paths (/nix/store/...) made by the script:
#   tools       directory object with bin/{mkdir,chmod,ln,cat}
#   singleFile  single-file object (`nix-store --add FILE`)
{ tools, singleFile }:

let
  system = builtins.currentSystem;

  # builtins.storePath gives the string the context of a store path that is already
  # valid, so derivations can depend on objects added outside the evaluator.
  toolsPath = builtins.storePath tools;
  singlePath = builtins.storePath singleFile;

  # A text store object (role textFile): its content is also written to the manifest.
  textContent = "Hello from the lower store.\nThis file was made by builtins.toFile.\n";
  textFile = builtins.toFile "lower-greeting.txt" textContent;

  lib = derivation {
    name = "lower-lib-1.0";
    inherit system;
    builder = "/bin/sh";
    PATH = "${toolsPath}/bin";
    greeting = textFile;
    args = [ "-c" ''
      set -e
      mkdir -p $out/lib/lower $out/share/doc/lower-lib $out/include
      printf 'int lower_answer(void) { return 42; }\n' > $out/lib/lower/answer.c
      printf '#define LOWER_ANSWER 42\n' > $out/include/lower.h
      cat $greeting > $out/share/doc/lower-lib/README
      # A file that refers to the text object: lib -> textFile reference.
      echo "$greeting" > $out/share/doc/lower-lib/greeting-path
      printf '#!/bin/sh\necho lower-lib says 42\n' > $out/lib/lower/hello.sh
      chmod 0555 $out/lib/lower/hello.sh
      ln -s lower/answer.c $out/lib/answer.c
      i=0
      while [ $i -lt 20 ]; do
        echo "data file $i of lower-lib" > $out/lib/lower/data-$i.txt
        i=$((i + 1))
      done
    '' ];
  };

  app = derivation {
    name = "lower-app-1.0";
    inherit system;
    builder = "/bin/sh";
    PATH = "${toolsPath}/bin";
    inherit lib;
    single = singlePath;
    args = [ "-c" ''
      set -e
      mkdir -p $out/bin $out/etc
      # The app's output mentions lib's output and the single-file object, so Nix
      # records both as references of appOut.
      printf '#!/bin/sh\n. %s/lib/lower/hello.sh\ncat %s\n' "$lib" "$single" > $out/bin/lower-app
      chmod 0555 $out/bin/lower-app
      echo "$lib" > $out/etc/lib-path
      echo "$single" > $out/etc/single-path
      cat $lib/include/lower.h > $out/etc/copied-header.h
    '' ];
  };
in
{
  inherit lib app;

  # Everything the script needs for the manifest, in one evaluation (with
  # --read-write-mode this also writes the .drv files and the text object).
  info = {
    libDrv = lib.drvPath;
    libOut = lib.outPath;
    appDrv = app.drvPath;
    appOut = app.outPath;
    textFile = textFile;
    inherit textContent;
  };
}
