#!/usr/bin/env bash
# Quickstart 1: set up, find real data, and train the seeds' 784-50-10 MLP with
# hand-written gradients (extra arguments go to `handgrad train`; with --dataset fortunes or words, that
# text is installed instead of the images).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
setup_venv
case " $* " in  # the text a character model is asked to train on, installed where apt can
  *" fortunes "*|*"=fortunes "*) ensure_fortunes ;;
  *" words "*|*"=words "*) ensure_words ;;
  *" --model gpt "*|*" --model lstm "*|*" --model rnn "*|*"--model=gpt "*|*"--model=lstm "*|*"--model=rnn "*) ;;
  *) ensure_data ;;
esac
exec "$HG" train "$@"
