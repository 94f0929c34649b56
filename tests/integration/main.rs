//! exp's integration tests: one binary (one link, one build), real Git repositories in temp
//! directories, real `git` and `git lfs`, real data from the data root (DESIGN §3).

mod common;
mod compare;
mod data;
mod failures;
mod flow;
mod full_epoch;
mod gate;
mod init;
mod init_from;
mod lfs;
mod recipes;
mod run;
